"""DeepLIIF: an IHC image -> hematoxylin, DAPI, Lap2, marker and classified cells.

The networks run through the one Predictor, like every task; DeepLIIF adds only what is
its own: the 15 output channels are turned into five 8-bit RGB renderings as they are
written (so a 10000 x 10000 region never holds 15 float planes: 15 bytes per pixel, in
memory or in an on-disk zarr store), then the cells are found in the fused segmentation
(:mod:`.deepliif_cells`) and can be exported as a CSV table, GeoJSON polygons and a JSON
summary that mirrors DeepLIIF's own.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine.predictor import Predictor
from ..errors import CheckpointError, InputError, ReaderError, check_cancel
from ..io.deepliif_panels import check_rgb8
from ..io.outputs import atomic_file
from ..models.card import ModelCard
from ..models.deepliif_net import MODALITIES, SEGMENTATION
from .deepliif_cells import (CHANNEL_COLUMNS, SEG_THRESHOLD_DEFAULT, CellAnalysis, Classification, analyse_cells,
                             class_names)
from .deepliif_dab_vote import DAB, DabRedraw, card_positive_from, check_positive_from
from .region import Region

IMAGES = (*MODALITIES, SEGMENTATION)
MIN_SIDE = 16  # smaller than this there is no cell to find
DEFAULT_MODEL = "deepliif-small"
# Regions with more pixels than this keep their modalities in an on-disk zarr store, not in memory.
STORE_ABOVE_PIXELS = 64 * 1024 * 1024


def needs_store(region_shape) -> bool:
    """True when a region is big enough that its outputs should go to disk (zarr)."""
    return int(np.prod(region_shape)) > STORE_ABOVE_PIXELS


def load_deepliif_model(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """A DeepLIIF model: a release folder (official TorchScript), one of our ``.pt`` models or
    a bioimage.io package exported from one (models.registry decides which a path is)."""
    from ..models.registry import load_model

    model, card = load_model(name_or_path)
    if card.task != "deepliif":
        raise CheckpointError(f"The model {card.name!r} is a {card.task} model, not a DeepLIIF model.")
    return model, card


def as_rgb8(data, name: str = "image"):
    """The layer data as (Y, X, 3) uint8, or an InputError sentence (grey, RGBA, 16-bit...).

    Lazy arrays (dask, zarr) stay lazy: only their shape, dtype and a sample of an alpha
    channel are read.
    """
    try:
        if isinstance(data, np.ndarray) or not hasattr(data, "shape"):
            return check_rgb8(np.asarray(data), f"'{name}'")
        shape, dtype = tuple(data.shape), np.dtype(data.dtype)
        if len(shape) == 3 and shape[-1] in (3, 4) and dtype == np.uint8:
            if shape[-1] == 4:
                check_rgb8(np.asarray(data[::max(1, shape[0] // 256), ::max(1, shape[1] // 256)]), f"'{name}'")
                return data[..., :3]
            return data
        return check_rgb8(np.asarray(data[:2, :2]), f"'{name}'")  # says what is wrong
    except ReaderError as err:
        raise InputError(str(err)) from None


class _RGBSink:
    """An ``out`` for the Predictor that stores its 15 channels as five RGB uint8 images.

    The Predictor writes whole strips ``out[:, rows] = values``; each strip is converted
    at once, so no full-size float array ever exists.
    """

    def __init__(self, targets: list, shape: tuple[int, int], truncate: bool = False,
                 redraw_last: Callable[[slice, np.ndarray], np.ndarray] | None = None):
        self.targets = targets
        self.shape = (3 * len(targets),) + tuple(shape)
        self.truncate = truncate  # deepliif's own rendering: uint8((y + 1) / 2 * 255), no rounding
        self.redraw_last = redraw_last  # (rows, strip) -> strip, for the last target (the segmentation)

    def __setitem__(self, index, values) -> None:
        rows = index[1] if isinstance(index, tuple) and len(index) > 1 else slice(None)
        values = np.asarray(values)
        scaled = np.empty((3,) + values.shape[1:], dtype=np.float32)  # one buffer, reused: no temporaries
        for k, target in enumerate(self.targets):
            np.multiply(values[3 * k:3 * k + 3], np.float32(255.0), out=scaled)
            (np.floor if self.truncate else np.rint)(scaled, out=scaled)
            np.clip(scaled, 0, 255, out=scaled)
            strip = scaled.astype(np.uint8).transpose(1, 2, 0)
            if self.redraw_last is not None and k == len(self.targets) - 1:
                strip = self.redraw_last(rows, strip)
            target[rows] = strip


def _allocate(shape: tuple[int, int], store: str | os.PathLike | None) -> dict[str, Any]:
    """Five (Y, X, 3) uint8 arrays: numpy in memory, or zarr arrays in ``store`` (a folder)."""
    if store is None:
        return {name: np.zeros(shape + (3,), dtype=np.uint8) for name in IMAGES}
    import zarr

    root = zarr.open_group(str(store), mode="w")
    chunks = (min(1024, shape[0]), min(1024, shape[1]), 3)
    return {name: root.create_array(name, shape=shape + (3,), chunks=chunks, dtype="uint8")
            if hasattr(root, "create_array") else root.zeros(name, shape=shape + (3,), chunks=chunks, dtype="uint8")
            for name in IMAGES}


def split_outputs(out: np.ndarray) -> dict[str, np.ndarray]:
    """Predictor output (15, Y, X) display values in [0, 1] -> five (Y, X, 3) uint8 renderings."""
    out = np.asarray(out)
    if out.shape[0] != 3 * len(IMAGES):
        raise InputError(f"A DeepLIIF output has {3 * len(IMAGES)} channels, not {out.shape[0]}.")
    return {name: np.clip(np.rint(out[3 * k:3 * k + 3] * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            for k, name in enumerate(IMAGES)}


@dataclass
class DeepLIIFResult:
    images: dict[str, Any]  # "Hematoxylin", "DAPI", "Lap2", "Marker", "Segmentation" -> (Y, X, 3) uint8
    region: Region
    card: ModelCard | None  # None for maps a user brought (no network ran)
    cells: CellAnalysis | None = None
    store: str | None = None  # the zarr folder holding ``images``, if they live on disk
    # The in-plane factor of the pyramid level the maps were predicted at (1: full resolution):
    # cells there are that many times smaller in pixels, which the automatic magnification follows.
    downsample: float = 1.0

    def analyse(self, segmentation_threshold: int = SEG_THRESHOLD_DEFAULT, resolution: str = "40x",
                split: int | None = None, grow: int | None = None) -> CellAnalysis:
        """(Re)build the cell table from the stored maps: no network runs.

        ``images`` may hold only the Segmentation and Marker (maps a user brought). ``split``:
        the split depth of touching nuclei (None: deepliif's regions); ``grow``: px every cell
        grows after it (None: as drawn).
        """
        modalities = {key: self.images.get(name) for key, name in zip(CHANNEL_COLUMNS, MODALITIES)}
        previous = self.cells
        self.cells = analyse_cells(self.images[SEGMENTATION], modalities["marker"], modalities,
                                   segmentation_threshold, resolution, split, grow)
        if previous is not None and previous.overrides:
            self.cells.overrides = carry_overrides(previous, self.cells)
        return self.cells


def carry_overrides(old: CellAnalysis, new: CellAnalysis) -> dict[int, int]:
    """Hand corrections survive a relabel: each goes to the new cell under the old cell's centroid."""
    carried = {}
    height, width = new.labels.shape
    for label, cls in old.overrides.items():
        y = int(round(float(old.table["centroid_y"][label - 1])))
        x = int(round(float(old.table["centroid_x"][label - 1])))
        if 0 <= y < height and 0 <= x < width and new.labels[y, x] > 0:
            carried[int(new.labels[y, x])] = cls
    return carried


def run_deepliif(predictor: Predictor, layer_data, *, name: str = "image", region: Region | None = None,
                 store: str | os.PathLike | None = None, analyse: bool = True,
                 segmentation_threshold: int = SEG_THRESHOLD_DEFAULT, resolution: str = "40x",
                 progress: Callable[[int, int], None] | None = None, cancel=None,
                 split: int | None = None, positive_from: str | None = None, grow: int | None = None) -> DeepLIIFResult:
    """Run DeepLIIF on ``region`` (default: all) of an RGB layer's data (Y, X, 3) uint8.

    A margin of real context (the card's overlap) is read around a partial region so its
    border pixels come out as in a whole-image run. ``store``: a folder for zarr outputs
    (bounded memory for very large regions); ``None`` keeps them in memory. ``positive_from``:
    "network" (deepliif's rule) or "dab" (the IHC's DAB vote, :mod:`.deepliif_dab_vote`);
    None: what the model's card asks for.
    """
    card = predictor.card
    if card.task != "deepliif":
        raise InputError(f"The model '{card.name}' is a {card.task} model; choose a DeepLIIF model.")
    data = as_rgb8(layer_data, name)
    spatial = tuple(int(s) for s in data.shape[:2])
    region = region or Region.whole(spatial)
    if min(region.shape) < MIN_SIDE:
        raise InputError(f"The region is only {region.shape[1]} x {region.shape[0]} pixels; DeepLIIF needs at "
                         f"least {MIN_SIDE} x {MIN_SIDE} to find cells.")
    margin = tuple(int(o) for o in card.overlap)
    outer = region.grow(margin, spatial)
    block = data[outer.slices]
    image = block.transpose(2, 0, 1)  # channels first, a view for numpy, dask and zarr
    whole = outer == region
    images = _allocate(outer.shape, store if whole else None)
    truncate = card.extra.get("to_uint8") == "truncate"
    positive_from = check_positive_from(positive_from) if positive_from is not None else card_positive_from(card)
    redraw = DabRedraw(block) if positive_from == DAB else None
    sink = _RGBSink([images[n] for n in IMAGES], outer.shape, truncate=truncate, redraw_last=redraw)
    predictor.predict(image, out=sink, progress=progress, cancel=cancel)
    check_cancel(cancel)
    if not whole:
        inner = region.relative_to(outer)
        images = {k: np.ascontiguousarray(v[inner]) for k, v in images.items()}
    result = DeepLIIFResult(images, region, card, store=str(store) if store is not None and whole else None)
    if analyse:
        result.analyse(segmentation_threshold, resolution, split, grow)
    return result


# ---- exports ------------------------------------------------------------------------------

def cell_rows(analysis: CellAnalysis, classification: Classification, offset=(0, 0),
              pixel_size_um: float | None = None, scale: float = 1.0) -> list[dict[str, Any]]:
    """One dict per cell: id, class, area, centroid (image pixels), marker and channel means.

    ``scale``: for maps of a pyramid level, its factor: centroids (after ``offset``, in the
    level's pixels) and areas are given in the full resolution's pixels."""
    t = analysis.table
    names = class_names(classification)
    manual = set(analysis.overrides)
    rows = []
    for i in range(analysis.n_cells):
        row = {"id": int(t["id"][i]), "class": str(names[i]), "area_px": int(round(float(t["area"][i]) * scale ** 2))}
        if pixel_size_um:
            row["area_um2"] = round(float(t["area"][i]) * pixel_size_um ** 2, 3)
        row.update({"centroid_y": round((float(t["centroid_y"][i]) + offset[0]) * scale, 2),
                    "centroid_x": round((float(t["centroid_x"][i]) + offset[1]) * scale, 2),
                    "positive_fraction": round(float(t["positive_fraction"][i]), 4),
                    "marker_max": round(float(t["marker_max"][i]), 2)})
        for name in CHANNEL_COLUMNS:
            row[f"mean_{name}"] = round(float(t[f"mean_{name}"][i]), 2)
        row["manual"] = int(t["id"][i]) in manual
        rows.append(row)
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """The cell table as CSV, atomically: a failure midway keeps the file that was there."""
    path = Path(path)
    fields = list(rows[0]) if rows else ["id", "class", "area_px", "centroid_y", "centroid_x"]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def cell_polygons(analysis: CellAnalysis, classification: Classification, offset=(0, 0),
                  include_excluded: bool = False, scale: float = 1.0) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: one polygon per cell (x, y in image pixels; ``scale`` as for
    :func:`cell_rows`) with its row as properties."""
    from scipy import ndimage
    from skimage.measure import find_contours

    rows = {r["id"]: r for r in cell_rows(analysis, classification, offset, scale=scale)}
    features = []
    for label, box in enumerate(ndimage.find_objects(analysis.labels), start=1):
        if box is None or (not include_excluded and classification.classes[label] == 0):
            continue
        mask = np.pad(analysis.labels[box] == label, 1)
        contours = find_contours(mask.astype(np.uint8), 0.5)
        if not contours:
            continue
        ring = max(contours, key=len)
        ys = (ring[:, 0] - 1 + box[0].start + offset[0]) * scale
        xs = (ring[:, 1] - 1 + box[1].start + offset[1]) * scale
        coords = [[round(float(x), 2), round(float(y), 2)] for y, x in zip(ys, xs)]
        if coords[0] != coords[-1]:
            coords.append(coords[0])
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
                         "properties": rows[label]})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, collection: dict[str, Any]) -> Path:
    """The cell polygons as GeoJSON, atomically (streamed: a large slide's polygons are not
    held twice as text); a failure midway keeps the file that was there."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(collection, fh)
    return path


def summary(classification: Classification, card: ModelCard | str | None, region: Region) -> dict[str, Any]:
    """Counts, percent positive (the marker index) and the thresholds used, as deepliif reports them."""
    data = classification.summary()
    data.update({"model": getattr(card, "name", card), "region": {"start": list(region.start), "stop": list(region.stop)}})
    return data
