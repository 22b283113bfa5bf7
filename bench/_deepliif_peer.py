"""Ours against DeepLIIF's official tool, full-size networks, same image, same machine, one run.

Both run as the user runs them: a fresh process for one image, from start to the files on disk
(``virtual-stain deepliif IMAGE --model FOLDER -o OUT`` and ``deepliif test --input-dir D
--model-dir FOLDER --tile-size 512``), on the same full-size official-format release folder made
by deepliif 1.2.7's own code (``../shared/peer-deepliif/harness/make_model.py``: 4 x ResNet-9blocks
ngf 64 + 5 x U-Net-512, random weights seeded 0). Then, in this process, where our time goes:
each network over all tiles, the cells, and the writing.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import REPO

PEER = REPO.parent / "shared" / "peer-deepliif"
VENV_CANDIDATES = (os.environ.get("DEEPLIIF_PEER_VENV", ""), str(PEER / "venv"), "/tmp/peer-venv")
FULL_MODEL = Path(tempfile.gettempdir()) / "nvs-bench" / "deepliif-full-seed0"


def peer_python() -> Path | None:
    """The official tool's venv interpreter, if one was set up (``../shared/peer-deepliif/setup.sh``)."""
    for venv in VENV_CANDIDATES:
        python = Path(venv) / "bin" / "python" if venv else None
        if python is not None and python.exists():
            return python
    return None


def full_size_release(python: Path) -> Path:
    """The full-size release folder, made once by deepliif's own code and kept for later runs."""
    models = FULL_MODEL / "models"
    found = sorted(models.glob("*/G1.pt")) if models.exists() else []
    if not found:
        shutil.rmtree(FULL_MODEL, ignore_errors=True)
        FULL_MODEL.mkdir(parents=True)
        subprocess.run([str(python), str(PEER / "harness" / "make_model.py"), str(FULL_MODEL), "--seed", "0"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = sorted(models.glob("*/G1.pt"))
    return found[0].parent


def _timed_process(command: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def ours_process(image: Path, model: Path, out: Path, precision: str = "fp32") -> float:
    """Wall seconds of one whole ``virtual-stain deepliif`` process on ``image``."""
    return _timed_process([sys.executable, "-m", "napari_virtual_stain.cli", "deepliif", str(image), "--model",
                           str(model), "-o", str(out), "--precision", precision])


def whole_processes(image: Path, model: Path, python: Path, work: Path) -> dict[str, float]:
    """Wall seconds of one whole process of each tool on ``image`` (ours first, then the official)."""
    inputs = work / "in"
    inputs.mkdir()
    (inputs / image.name).symlink_to(image)
    ours = ours_process(image, model, work / "ours")
    official = _timed_process([str(python), str(PEER / "harness" / "deepliif_cli.py"), "test", "--input-dir",
                               str(inputs), "--output-dir", str(work / "official"), "--tile-size", "512",
                               "--model-dir", str(model)])
    return {"ours": ours, "official": official}


def modality_differences(image: Path, work: Path, other: str = "official") -> dict[str, int]:
    """Largest difference in 8-bit levels between our files and ``work/other``'s, per modality."""
    from PIL import Image

    stem = image.stem
    pairs = {"Hema": "Hema", "DAPI": "DAPI", "Lap2": "Lap2", "Marker": "Marker", "Seg": "Seg"}
    out = {}
    for ours_name, theirs_name in pairs.items():
        theirs = sorted((work / other).glob(f"{stem}_*{theirs_name}.png"))
        mine = work / "ours" / f"{stem}_{ours_name}.png"
        if theirs and mine.exists():
            a = np.asarray(Image.open(mine).convert("RGB"), dtype=int)
            b = np.asarray(Image.open(theirs[0]).convert("RGB"), dtype=int)
            out[ours_name] = int(np.abs(a - b).max()) if a.shape == b.shape else -1
    return out


class _Timed(torch.nn.Module):
    """Adds the wall time of every call of ``net`` to ``totals[name]``."""

    def __init__(self, net: torch.nn.Module, name: str, totals: dict):
        super().__init__()
        self.net, self.name, self.totals = net, name, totals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        y = self.net(x)
        self.totals[self.name] += time.perf_counter() - started
        return y


def where_the_time_goes(image_path: Path, model_dir: Path) -> tuple[list[list[object]], int]:
    """Our pipeline in this process, split: reading, each network over all tiles, cells, writing."""
    from napari_virtual_stain.workflows.deepliif_files import FILE_SUFFIX
    from napari_virtual_stain.engine.predictor import Predictor
    from napari_virtual_stain.io.tiff_reader import load_image
    from napari_virtual_stain.models.deepliif_official import load_release_folder
    from napari_virtual_stain.tasks.deepliif import run_deepliif
    from napari_virtual_stain.tasks.deepliif_cells import Thresholds
    from napari_virtual_stain.tasks.deepliif_files import write_cell_files, write_png

    parts: dict[str, float] = collections.defaultdict(float)
    started = time.perf_counter()
    image = load_image(image_path).data[..., :3]
    parts["read image"] = time.perf_counter() - started
    started = time.perf_counter()
    model, card = load_release_folder(model_dir)
    parts["load the nine networks"] = time.perf_counter() - started
    totals: dict[str, float] = collections.defaultdict(float)
    model.translators = torch.nn.ModuleList(_Timed(g, f"G{i + 1}", totals) for i, g in enumerate(model.translators))
    model.segmenters = torch.nn.ModuleList(_Timed(g, f"G5{i + 1}", totals) for i, g in enumerate(model.segmenters))
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    started = time.perf_counter()
    result = run_deepliif(predictor, image, analyse=False)
    predict_s = time.perf_counter() - started
    started = time.perf_counter()
    cells = result.analyse()
    classes = cells.classify(Thresholds())
    parts["cells (labels, table, classes)"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        for name, suffix in FILE_SUFFIX.items():
            write_png(Path(out) / f"{image_path.stem}_{suffix}.png", result.images[name])
        write_cell_files(lambda name: Path(out) / name, image_path.stem, cells, classes, {}, ihc=image)
        parts["write the files (PNGs, labels, table, polygons)"] = time.perf_counter() - started
    networks = sum(totals.values())
    rows = [[name, f"{seconds:.1f}"] for name, seconds in totals.items()]
    rows.append(["tiling, normalising, blending (Predictor, outside the networks)", f"{predict_s - networks:.1f}"])
    rows += [[name, f"{seconds:.2f}"] for name, seconds in parts.items()]
    from napari_virtual_stain.engine.tiling import n_tiles

    return rows, n_tiles(image.shape[:2], predictor.tile, predictor.overlap)
