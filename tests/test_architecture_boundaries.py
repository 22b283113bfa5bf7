"""The layers of the house: nothing below widgets/ imports Qt (or napari's Qt parts)."""

import pkgutil
import subprocess
import sys

import napari_virtual_stain

CORE_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(napari_virtual_stain.__path__, "napari_virtual_stain.")
    if ".widgets" not in m.name and not m.name.endswith("__main__")
)

PROBE = """
import importlib, sys
for name in {modules!r}:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules
             if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'magicgui')
             or m.startswith(('napari._qt', 'napari.qt', 'napari._vispy')))
print('\\n'.join(bad))
"""


def test_core_imports_no_qt():
    assert len(CORE_MODULES) > 10  # the walk found the package
    result = subprocess.run([sys.executable, "-c", PROBE.format(modules=CORE_MODULES)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core modules pulled in Qt: {result.stdout}"
