#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for napari-virtual-stain: system libraries for Qt
# under a virtual X server, a virtual environment in .venv, PyTorch (CPU build unless one
# is already there), and the package with its test and Qt extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
  libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0 \
  libgl1 libegl1 libglib2.0-0 libdbus-1-3 libfontconfig1"
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  missing=$(for p in $SYSTEM_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Torch first, pinned: a bare `torch` requirement would pull the newest CUDA build (GBs).
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[testing,pyqt6]"
python -c "import napari_virtual_stain, torch, napari; print('napari-virtual-stain ready: torch', torch.__version__, '| napari', napari.__version__)"
