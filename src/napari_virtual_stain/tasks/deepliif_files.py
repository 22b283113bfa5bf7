"""The files DeepLIIF's tools write, and the maps they wrote that a user brings back.

``virtual-stain deepliif`` and ``virtual-stain deepliif-cells`` write the same cell files,
named as deepliif names them, for an input ``ROI_1.png``:

- ``ROI_1_SegRefined.png`` and ``ROI_1_SegOverlaid.png`` (deepliif's pictures, pixel for pixel);
- ``ROI_1.json``: deepliif's scoring (``num_total``, ``num_pos``, ``num_neg``, ``percent_pos``,
  ``seg_thresh``, ``size_thresh``, ``size_thresh_upper``, ``marker_thresh``) and what we add;
- ``ROI_1_labels.tif`` (cell labels), ``ROI_1_cells.csv`` and ``ROI_1_cells.geojson``.

Maps someone already has come as deepliif writes them: ``<stem>_Seg.png`` and
``<stem>_mod4-Marker.png`` (deepliif 1.2.x, release models) or ``<stem>_Marker.png`` (older
versions, deepliif.org, and ours).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, ReaderError
from ..io.deepliif_panels import check_rgb8
from .deepliif_cells import CellAnalysis, Classification
from .deepliif_render import render_overlay, render_refined

SEG_SUFFIXES = ("_Seg",)
MARKER_SUFFIXES = ("_mod4-Marker", "_Marker")
_MAP_NAME = re.compile(r"^(?P<stem>.+?)(?P<suffix>_Seg|_mod4-Marker|_Marker)(?:\.\w+)?$")


def write_png(path: Path, rgb) -> Path:
    import imageio.v3 as iio

    iio.imwrite(path, np.asarray(rgb), extension=".png")
    return path


def write_cell_files(path_for: Callable[[str], Path], stem: str, analysis: CellAnalysis,
                     classification: Classification, info: dict[str, Any], ihc=None,
                     pixel_size_um: float | None = None) -> dict[str, Any]:
    """Write the cell files for ``stem``; ``path_for(name)`` says where each goes (a staging folder).

    ``info`` is added to deepliif's scoring in the JSON; returns the JSON's content.
    """
    import tifffile

    from .deepliif import cell_polygons, cell_rows, write_csv, write_geojson

    write_png(path_for(f"{stem}_SegRefined.png"), render_refined(analysis, classification))
    if ihc is not None:
        write_png(path_for(f"{stem}_SegOverlaid.png"), render_overlay(np.asarray(ihc), analysis, classification))
    tifffile.imwrite(path_for(f"{stem}_labels.tif"), analysis.labels, compression="zlib")
    write_csv(path_for(f"{stem}_cells.csv"), cell_rows(analysis, classification, pixel_size_um=pixel_size_um))
    write_geojson(path_for(f"{stem}_cells.geojson"), cell_polygons(analysis, classification))
    scoring = classification.summary()
    scoring.update(info)
    path_for(f"{stem}.json").write_text(json.dumps(scoring, indent=1))
    return scoring


# ---- maps a user brings -------------------------------------------------------------------------

def map_stem(name: str) -> tuple[str, str] | None:
    """``("ROI_1", "_Seg")`` for a deepliif map name (file or layer) like ``ROI_1_Seg.png``, else None."""
    match = _MAP_NAME.match(Path(name).name if "/" in name or "\\" in name else name)
    return (match["stem"], match["suffix"]) if match else None


def find_maps(ihc_name: str, names: list[str]) -> tuple[str | None, str | None]:
    """The Seg and Marker names among ``names`` that belong to the IHC named ``ihc_name``.

    deepliif names its outputs after the input (``ROI_1.png`` -> ``ROI_1_Seg.png``); the
    1.2.x marker name ``_mod4-Marker`` is preferred to the older ``_Marker``.
    """
    stem = Path(ihc_name).stem if "." in ihc_name else ihc_name
    found: dict[str, str] = {}
    for name in names:
        parsed = map_stem(name)
        if parsed and parsed[0] == stem:
            found.setdefault(parsed[1], name)
    seg = next((found[s] for s in SEG_SUFFIXES if s in found), None)
    marker = next((found[s] for s in MARKER_SUFFIXES if s in found), None)
    return seg, marker


def check_maps(ihc, seg, marker, names: tuple[str, str, str] = ("IHC", "Seg", "Marker")):
    """The three images as (Y, X, 3) uint8 of one size, or an InputError sentence."""
    arrays = []
    for data, name in zip((ihc, seg, marker), names):
        if data is None:
            arrays.append(None)
            continue
        try:
            arrays.append(check_rgb8(np.asarray(data), f"'{name}'"))
        except ReaderError as err:
            raise InputError(str(err)) from None
    shapes = {name: a.shape[:2] for a, name in zip(arrays, names) if a is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} is {s[1]} x {s[0]}" for name, s in shapes.items())
        raise InputError(f"The DeepLIIF maps must have the size of the IHC image they came from, but {listed}.")
    return arrays
