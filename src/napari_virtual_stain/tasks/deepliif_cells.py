"""DeepLIIF cells: the fused segmentation -> instance labels, classes, counts, per-cell table.

The rules are those of DeepLIIF's own tools (``deepliif.postprocessing``), vectorised:

- a pixel is *cell* where red + blue > the segmentation threshold (0-510, default 150) and
  green <= 80; a cell pixel is *positive* where red >= blue, else *negative*;
- non-cell pixels connected (4-neighbours) to the image border are background; enclosed
  non-cell pixels (the green boundaries between touching cells) belong to the cells;
- a cell is an 8-connected region of what is left; it is kept when its area is above the
  size threshold (pixels; "auto" = DeepLIIF's KDE rule) and below an optional upper bound;
- a kept cell is positive when at least half its classified pixels are positive, or when
  its brightest marker pixel is above the marker threshold (0-255; "auto" = 90 % of the
  marker's 0.1-99.9 percentile range), else negative.

Everything a threshold needs is computed once into a per-cell table (:class:`CellAnalysis`),
so moving the size or marker threshold reclassifies in microseconds and never runs the
networks. Moving the segmentation threshold changes which pixels are cells: that relabels
the stored segmentation map (tens of milliseconds per megapixel), still without networks.
Manual corrections (flip a cell's class, exclude it) are kept by cell id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError

EXCLUDED, NEGATIVE, POSITIVE = 0, 1, 2
CLASS_NAMES = {EXCLUDED: "excluded", NEGATIVE: "negative", POSITIVE: "positive"}
SEG_THRESHOLD_DEFAULT = 150
GREEN_MAX = 80  # DeepLIIF: a pixel with green above this is boundary, not cell
# DeepLIIF's bounds on the automatic size threshold, as sqrt(pixels), at 40x: (min, fallback, max).
AUTO_SIZE_SQRT = {"40x": (4, 7, 10), "20x": (3, 4, 6), "10x": (2, 2, 3)}
MAX_KDE_CELLS = 20000  # the automatic size threshold from at most this many cells (a random subset)
CHANNEL_COLUMNS = ("hematoxylin", "dapi", "lap2", "marker")


@dataclass(frozen=True)
class Thresholds:
    """Cell thresholds in DeepLIIF's units. ``None`` means automatic (computed from the image)."""

    segmentation: int = SEG_THRESHOLD_DEFAULT  # red + blue, 0-510
    size: int | None = None  # minimum cell area in pixels (a cell must be larger)
    size_upper: int | None = None  # maximum cell area in pixels, None = no limit
    marker: int | None = None  # 0-255; a cell whose brightest marker pixel is above it is positive


def _grey(rgb: np.ndarray) -> np.ndarray:
    """(Y, X, 3) uint8 rendering -> (Y, X) float32 intensity 0-255 (mean of R, G, B)."""
    return np.asarray(rgb, dtype=np.float32).mean(axis=-1)


def cell_pixels(segmentation: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (cell, positive) pixel maps of a fused segmentation RGB image, DeepLIIF's rule."""
    red = segmentation[..., 0].astype(np.int16)
    blue = segmentation[..., 2].astype(np.int16)
    cell = ((red + blue) > int(threshold)) & (segmentation[..., 1] <= GREEN_MAX)
    return cell, cell & (red >= blue)


def cell_regions(cell: np.ndarray) -> np.ndarray:
    """Cell pixels plus enclosed non-cell pixels: everything not reachable from the border."""
    other, n = ndimage.label(~cell)  # 4-connectivity, as DeepLIIF's region growing
    if n == 0:
        return np.ones_like(cell)
    border = np.unique(np.concatenate([other[0], other[-1], other[:, 0], other[:, -1]]))
    background = np.isin(other, border[border > 0])
    return ~background


def auto_size_threshold(areas: np.ndarray, resolution: str = "40x", seed: int = 0) -> int:
    """DeepLIIF's automatic size threshold: first minimum of a KDE of sqrt(area), clipped.

    Returns a number of pixels; 0 when there are no cells.
    """
    areas = np.asarray(areas, dtype=np.float64)
    if areas.size == 0:
        return 0
    if areas.size > MAX_KDE_CELLS:
        areas = np.random.default_rng(seed).choice(areas, MAX_KDE_CELLS, replace=False)
    values = np.sqrt(areas)
    count = 500
    step = (values.max() + 1) / count
    grid = np.arange(count) * step
    kde = np.zeros(count)
    for chunk in np.array_split(values, max(1, values.size // 2000)):  # bounded memory
        kde += np.exp(-0.5 * (grid[:, None] - chunk[None, :]) ** 2).sum(axis=1)
    index = 1
    minima = np.nonzero((kde[1:-1] < kde[:-2]) & (kde[1:-1] < kde[2:]))[0]
    if minima.size:
        index = int(minima[0]) + 1
    thresh_sqrt = (index - 1) * step
    low, fallback, high = AUTO_SIZE_SQRT.get(resolution, AUTO_SIZE_SQRT["40x"])
    if thresh_sqrt < low:
        thresh_sqrt = low
    elif thresh_sqrt > high:
        thresh_sqrt = fallback
    return int(round(thresh_sqrt * thresh_sqrt))


def auto_marker_threshold(marker_grey: np.ndarray, max_samples: int = 1 << 22) -> int:
    """DeepLIIF's automatic marker threshold: 90 % of the way through the 0.1-99.9 percentile range."""
    flat = np.asarray(marker_grey).ravel()
    if flat.size > max_samples:
        flat = flat[:: flat.size // max_samples + 1]
    nonzero = flat[flat > 0]
    if nonzero.size == 0:
        return 0
    low, high = (round(float(v)) for v in np.percentile(nonzero, [0.1, 99.9]))
    return int(round((high - low) * 0.9) + low)


@dataclass
class Classification:
    """The class of every cell (index = label id; index 0 unused) and the counts."""

    classes: np.ndarray  # uint8, EXCLUDED / NEGATIVE / POSITIVE per label id
    thresholds: Thresholds  # with the automatic values filled in

    @property
    def positive(self) -> int:
        return int(np.count_nonzero(self.classes[1:] == POSITIVE))

    @property
    def negative(self) -> int:
        return int(np.count_nonzero(self.classes[1:] == NEGATIVE))

    @property
    def total(self) -> int:
        return self.positive + self.negative

    @property
    def percent_positive(self) -> float:
        return 100.0 * self.positive / self.total if self.total else 0.0

    def summary(self) -> dict[str, Any]:
        return {"num_total": self.total, "num_pos": self.positive, "num_neg": self.negative,
                "percent_pos": round(self.percent_positive, 2),
                "thresholds": {"segmentation": self.thresholds.segmentation, "size": self.thresholds.size,
                               "size_upper": self.thresholds.size_upper, "marker": self.thresholds.marker}}


@dataclass
class CellAnalysis:
    """Instance labels and the per-cell table of one segmentation, ready for instant recounts."""

    labels: np.ndarray  # (Y, X) int32, 0 = background
    table: dict[str, np.ndarray]  # one array per column, row i = label id i + 1
    segmentation_threshold: int
    auto_size: int
    auto_marker: int
    overrides: dict[int, int] = field(default_factory=dict)  # label id -> class chosen by hand

    @property
    def n_cells(self) -> int:
        return int(self.table["id"].size)

    def resolve(self, thresholds: Thresholds) -> Thresholds:
        """``thresholds`` with "auto" values replaced by the ones computed for this image."""
        return replace(thresholds, segmentation=self.segmentation_threshold,
                       size=self.auto_size if thresholds.size is None else int(thresholds.size),
                       marker=self.auto_marker if thresholds.marker is None else int(thresholds.marker))

    def classify(self, thresholds: Thresholds = Thresholds()) -> Classification:
        """Classes for every cell from the table alone (no pixels touched): microseconds."""
        t = self.resolve(thresholds)
        area = self.table["area"]
        kept = area > t.size
        if t.size_upper is not None:
            kept &= area < t.size_upper
        positive = (self.table["positive_fraction"] >= 0.5) | (self.table["marker_max"] > t.marker)
        classes = np.zeros(self.n_cells + 1, dtype=np.uint8)
        classes[1:] = np.where(kept, np.where(positive, POSITIVE, NEGATIVE), EXCLUDED)
        for label, cls in self.overrides.items():
            if 0 < label <= self.n_cells:
                classes[label] = cls
        return Classification(classes, t)

    def toggle(self, label: int, classification: Classification, exclude: bool = False) -> None:
        """A click on a cell: flip positive <-> negative, or exclude it (an excluded cell comes back)."""
        label = int(label)
        if not 0 < label <= self.n_cells:
            return
        current = int(classification.classes[label])
        if exclude:
            new = NEGATIVE if current == EXCLUDED else EXCLUDED
            if current == EXCLUDED:  # restore to what the thresholds say
                self.overrides.pop(label, None)
                return
        else:
            new = {POSITIVE: NEGATIVE, NEGATIVE: POSITIVE, EXCLUDED: POSITIVE}[current]
        self.overrides[label] = new


STRIP_ROWS = 1024  # rows per strip when building the table: bounded temporary memory on big images


def _strips(height: int, rows: int | None = None):
    rows = rows or STRIP_ROWS  # read at call time (tests shrink it)
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def _table(labels: np.ndarray, n: int, positive: np.ndarray, classified: np.ndarray,
           channels: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-cell columns from bincounts over the label image, strip by strip.

    ``channels`` maps column names to (Y, X, 3) uint8 array-likes (numpy, zarr, dask): each
    strip is read once and turned into a grey intensity there, so no full-size float copy
    of any channel ever exists.
    """
    sums = {key: np.zeros(n + 1) for key in ("area", "pos", "cls", "y", "x", *channels)}
    marker_max = np.zeros(n + 1)
    width = labels.shape[1]
    xs = np.arange(width, dtype=np.float64)
    for rows in _strips(labels.shape[0]):
        flat = labels[rows].ravel()
        ys = np.repeat(np.arange(rows.start, rows.stop, dtype=np.float64), width)
        sums["area"] += np.bincount(flat, minlength=n + 1)
        sums["pos"] += np.bincount(flat, weights=positive[rows].ravel(), minlength=n + 1)
        sums["cls"] += np.bincount(flat, weights=classified[rows].ravel(), minlength=n + 1)
        sums["y"] += np.bincount(flat, weights=ys, minlength=n + 1)
        sums["x"] += np.bincount(flat, weights=np.tile(xs, rows.stop - rows.start), minlength=n + 1)
        for name, rgb in channels.items():
            grey = _grey(np.asarray(rgb[rows]))
            sums[name] += np.bincount(flat, weights=grey.ravel(), minlength=n + 1)
            if name == "marker":
                present = np.unique(flat)
                present = present[present > 0]
                if present.size:
                    strip_max = np.asarray(ndimage.maximum(grey, labels[rows], present), dtype=np.float64)
                    marker_max[present] = np.maximum(marker_max[present], strip_max)
    area = sums["area"][1:].astype(np.int64)
    safe = np.maximum(area, 1)
    n_cls = sums["cls"][1:]
    table = {"id": np.arange(1, n + 1, dtype=np.int64), "area": area,
             "centroid_y": sums["y"][1:] / safe, "centroid_x": sums["x"][1:] / safe,
             "positive_fraction": np.where(n_cls > 0, sums["pos"][1:] / np.maximum(n_cls, 1), 0.0),
             "marker_max": marker_max[1:]}
    for name in CHANNEL_COLUMNS:
        table[f"mean_{name}"] = sums[name][1:] / safe if name in channels else np.full(n, np.nan)
    return table


def analyse_cells(segmentation, marker=None, modalities: dict[str, Any] | None = None,
                  segmentation_threshold: int = SEG_THRESHOLD_DEFAULT, resolution: str = "40x") -> CellAnalysis:
    """Label the cells of a fused segmentation RGB image and build their table.

    ``marker`` and the entries of ``modalities`` ("hematoxylin", "dapi", "lap2", "marker")
    are the inferred RGB renderings (Y, X, 3) uint8 of the same region. All may be numpy,
    zarr or dask arrays; they are read strip by strip. Memory: the label image (4 bytes
    per pixel) and a few boolean maps.
    """
    if len(segmentation.shape) != 3 or segmentation.shape[-1] != 3:
        raise InputError(f"The segmentation must be an RGB image (Y, X, 3), not shape {tuple(segmentation.shape)}.")
    if not 0 <= int(segmentation_threshold) <= 510:
        raise InputError(f"The segmentation threshold must lie between 0 and 510 (red + blue), not {segmentation_threshold}.")
    channels = {k: v for k, v in (modalities or {}).items() if k in CHANNEL_COLUMNS and v is not None}
    if marker is not None:
        channels["marker"] = marker
    for name, rgb in channels.items():
        if tuple(rgb.shape) != tuple(segmentation.shape):
            raise InputError(f"The {name} image is {tuple(rgb.shape)} but the segmentation is {tuple(segmentation.shape)}.")
    shape = tuple(segmentation.shape[:2])
    cell = np.empty(shape, dtype=bool)
    positive = np.empty(shape, dtype=bool)
    for rows in _strips(shape[0]):
        cell[rows], positive[rows] = cell_pixels(np.asarray(segmentation[rows]), segmentation_threshold)
    regions = cell_regions(cell)
    labels, n = ndimage.label(regions, structure=np.ones((3, 3), dtype=bool))
    del regions
    labels = labels.astype(np.int32, copy=False)
    table = _table(labels, n, positive, cell, channels)
    auto_marker = 255
    if "marker" in channels:
        step = max(1, int(np.sqrt(shape[0] * shape[1] / (1 << 22))))  # ~4 million pixels are plenty
        auto_marker = auto_marker_threshold(_grey(np.asarray(channels["marker"][::step, ::step])))
    return CellAnalysis(labels, table, int(segmentation_threshold), auto_size_threshold(table["area"], resolution),
                        auto_marker)


def classify_cells(segmentation: np.ndarray, marker: np.ndarray | None = None,
                   thresholds: Thresholds = Thresholds()) -> tuple[CellAnalysis, Classification]:
    """Convenience: analyse and classify in one call."""
    analysis = analyse_cells(segmentation, marker, segmentation_threshold=thresholds.segmentation)
    return analysis, analysis.classify(thresholds)


def class_image(analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """(Y, X) uint8 class of every pixel (0 background or excluded, 1 negative, 2 positive)."""
    return classification.classes[analysis.labels]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a labelled object with a 4-neighbour outside it (another label or background)."""
    edge = np.zeros(labels.shape, dtype=bool)
    inside = labels > 0
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & inside


def render_classified_mask(analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """DeepLIIF's classified mask: red positive, blue negative, green borders, black background."""
    classes = class_image(analysis, classification)
    kept_labels = np.where(classes > 0, analysis.labels, 0)
    rgb = np.zeros(analysis.labels.shape + (3,), dtype=np.uint8)
    rgb[classes == POSITIVE] = (255, 0, 0)
    rgb[classes == NEGATIVE] = (0, 0, 255)
    rgb[boundaries(kept_labels)] = (0, 255, 0)
    return rgb


def class_names(classification: Classification) -> np.ndarray:
    """Class name per cell (row i = label id i + 1)."""
    lookup = np.array([CLASS_NAMES[EXCLUDED], CLASS_NAMES[NEGATIVE], CLASS_NAMES[POSITIVE]], dtype=object)
    return lookup[classification.classes[1:]]
