"""Real (and synthetic) multiplex fields for calibrating and benchmarking the stain QC.

Every 1024x1024 MIBI field is cut into four 512x512 quadrants ("fields" below): a QC
stack of a new user is about that size (the issue's 7-plex is 500x500). Calibration and
evaluation use different fields, named here once so the calibration script, the bench and
the tests agree:

- CALIBRATION: MIBI DCIS Point2203 (4 quadrants), MIBI granuloma Point14 (4 quadrants),
  synthetic multiplex seed 0;
- EVALUATION: MIBI DCIS Point2206 (another patient of the cohort), MIBI HER2+ breast fov8
  (another lab's panel), DeepLIIF mpIF Lung1 and Bladder1 (immunofluorescence, another
  modality), synthetic multiplex seed 1. None of these is seen by the calibration.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("VIRTUAL_STAIN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

CALIBRATION = ["dcis-2203-q0", "dcis-2203-q1", "dcis-2203-q2", "dcis-2203-q3",
               "granuloma-q0", "granuloma-q1", "granuloma-q2", "granuloma-q3", "synthetic-0"]
EVALUATION = ["dcis-2206-q0", "dcis-2206-q1", "dcis-2206-q2", "dcis-2206-q3",
              "breast-q0", "breast-q1", "breast-q2", "breast-q3", "deepliif-lung1", "deepliif-bladder1",
              "synthetic-1"]

_MIBI = {"dcis-2203": "mibi-dcis/Point2203_CYX.tif", "dcis-2206": "mibi-dcis/Point2206_CYX.tif",
         "breast": "mibi-breast/fov8_CYX.tif", "granuloma": "mibi-granuloma/Point14_CYX.tif"}
_DEEPLIIF = {"deepliif-lung1": "deepliif-sample/train/Lung1.png", "deepliif-bladder1": "deepliif-sample/train/Bladder1.png"}
_cache: dict = {}


def available() -> bool:
    return all((DATA / p).exists() for p in list(_MIBI.values()) + list(_DEEPLIIF.values()))


def _mibi(key: str):
    if key not in _cache:
        from napari_virtual_stain.io.tiff_reader import load_image

        image = load_image(DATA / _MIBI[key])
        _cache[key] = (np.asarray(image.data), list(image.channel_names))
    return _cache[key]


def _grey(panel: np.ndarray) -> np.ndarray:
    return panel.max(axis=-1) if panel.ndim == 3 else panel


def load_field(name: str, size: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``(stack (C, Y, X), marker names)`` of a named field; ``size`` crops its centre (tests)."""
    if name.startswith("synthetic-"):
        from napari_virtual_stain.io.synthetic_multiplex import make_multiplex

        data = make_multiplex((512, 512), seed=int(name.split("-")[1]))
        stack, names = data["image"].astype(np.uint16), data["channel_names"]
    elif name in _DEEPLIIF:
        from napari_virtual_stain.io.deepliif_panels import read_panels

        p = read_panels(DATA / _DEEPLIIF[name])
        # the DeepLIIF 4-plex: hematoxylin, DAPI, Lap2 and Ki67 of one field, co-registered
        stack = np.stack([255 - _grey(p.hematoxylin).astype(np.int16), _grey(p.dapi), _grey(p.lap2),
                          _grey(p.marker)]).astype(np.uint8)
        names = ["Hematoxylin", "DAPI", "Lap2", "Ki67"]
    else:
        key, quadrant = name.rsplit("-q", 1)
        full, names = _mibi(key)
        q = int(quadrant)
        y, x = (q // 2) * 512, (q % 2) * 512
        stack = full[:, y:y + 512, x:x + 512]
    if size is not None:
        h, w = stack.shape[1:]
        y, x = (h - size) // 2, (w - size) // 2
        stack = stack[:, y:y + size, x:x + size]
    return np.ascontiguousarray(stack), list(names)
