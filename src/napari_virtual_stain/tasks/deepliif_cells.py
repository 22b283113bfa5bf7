"""DeepLIIF cells: the fused segmentation -> instance labels, classes, counts, per-cell table.

The rules and every default are those of deepliif 1.2.7 (``deepliif.postprocessing``,
``compute_final_results``), vectorised:

- a pixel is *cell* where red + blue > the segmentation threshold (0-510, default 120) and
  green <= 80; a cell pixel is *positive* where red >= blue, else *negative*;
- non-cell pixels connected (4-neighbours) to the image border are background; enclosed
  non-cell pixels (the green boundaries between touching cells) belong to the cells;
- a cell is an 8-connected region of what is left; regions of 4 pixels or fewer are noise
  (never cells, never counted); a cell is kept when its area is above the size threshold
  (pixels; "auto" = deepliif's 'default', a KDE rule that depends on the magnification) and
  below an optional upper bound;
- a kept cell is positive when it has at least as many positive as negative pixels, or
  when its brightest marker pixel (the maximum of R, G, B) is above the marker threshold
  (0-255; deepliif's default is none, "auto" = 90 % of the marker's 0.1-99.9 percentile range).

deepliif picks the magnification from the tile size (40x above 384, 20x above 192, else 10x):
:func:`resolution_for_tile`.

deepliif's thresholds suit deepliif's networks. A model of ours may carry its own, chosen by
its training script on its training rows, in its card (``extra["cell_thresholds"]``,
:func:`model_thresholds`); a threshold left as :data:`MODEL` takes the card's value, or
deepliif's default for a card without one (the official release folders, maps a user brought).
Such a card may also ask for a split of touching nuclei (``split``: an h-maxima depth in
pixels, :mod:`.deepliif_split`) and a growth of the cells after it (``grow``: pixels,
:mod:`.deepliif_grow`), steps deepliif does not have: without them (every release folder,
every map a user brought, every older card) the rules above are deepliif's exactly.

Everything a threshold needs is computed once into a per-cell table (:class:`CellAnalysis`),
so moving the size or marker threshold reclassifies in microseconds and never runs the
networks. Moving the segmentation threshold changes which pixels are cells: that relabels
the stored segmentation map (tens of milliseconds per megapixel), still without networks.
Manual corrections (flip a cell's class, exclude it) are kept by cell id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Union

import numpy as np
from scipy import ndimage

from ..errors import CheckpointError, InputError

EXCLUDED, NEGATIVE, POSITIVE = 0, 1, 2
CLASS_NAMES = {EXCLUDED: "excluded", NEGATIVE: "negative", POSITIVE: "positive"}
AUTO = "auto"
MODEL = "model"  # a threshold left to the model: its card's value, else deepliif's default
CARD_KEY = "cell_thresholds"  # where a model card keeps the thresholds its training script chose
SEG_THRESHOLD_DEFAULT = 120  # deepliif 1.2.7's DEFAULT_SEG_THRESH
NOISE_SIZE = 4  # deepliif's DEFAULT_NOISE_THRESH: regions of at most this many pixels are not cells
GREEN_MAX = 80  # DeepLIIF: a pixel with green above this is boundary, not cell
# deepliif's bounds on the automatic size threshold, as sqrt(pixels): (min, used when above max, max).
AUTO_SIZE_SQRT = {"40x": (4, 7, 10), "20x": (3, 4, 6), "10x": (2, 2, 3)}
RESOLUTIONS = tuple(AUTO_SIZE_SQRT)
KDE_BINS = 500
MAX_KDE_CELLS = 200_000  # more cells than this (whole slides): the KDE sees a random subset
CHANNEL_COLUMNS = ("hematoxylin", "dapi", "lap2", "marker")
Auto = Union[int, str, None]


def resolution_for_tile(tile: int) -> str:
    """deepliif's magnification from its tile size: 40x above 384 px, 20x above 192, else 10x."""
    return "40x" if tile > 384 else ("20x" if tile > 192 else "10x")


@dataclass(frozen=True)
class Thresholds:
    """Cell thresholds in deepliif's units; the defaults are deepliif 1.2.7's.

    ``size``: minimum cell area in pixels (a cell must be larger), or "auto" (deepliif's
    'default' rule; ``None`` means the same). ``marker``: ``None`` = no marker rule
    (deepliif's default), "auto" = deepliif's automatic value, or 0-255.
    """

    segmentation: int = SEG_THRESHOLD_DEFAULT  # red + blue, 0-510
    size: Auto = AUTO
    size_upper: int | None = None  # maximum cell area in pixels (a cell must be smaller), None = no limit
    marker: Auto = None
    # Not deepliif's: split touching nuclei at distance-transform peaks at least this deep (px), None = no split.
    split: int | None = None
    # Not deepliif's: grow every cell this many px into the background after the split (deepliif_grow), None = no growth.
    grow: int | None = None


def check_thresholds(t: Thresholds) -> Thresholds:
    """``t`` if every value is usable, else an InputError sentence (checked before any network runs)."""
    def number(value, what):
        if is_model(value):  # a programming slip, not a user's: resolve_model_values first
            raise InputError(f"The {what} is left to the model; resolve it with the model's card first.")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"The {what} must be a whole number, not {value!r}.")
        return int(value)

    seg = number(t.segmentation, "segmentation threshold")
    if not 0 <= seg <= 510:
        raise InputError(f"The segmentation threshold must lie between 0 and 510 (red + blue), not {seg}.")
    size = None if t.size in (None, AUTO) else number(t.size, "size threshold")
    if size is not None and size < 0:
        raise InputError(f"The size threshold must be 0 or more pixels, not {size}.")
    if t.size_upper is not None:
        upper = number(t.size_upper, "upper size threshold")
        lowest = max(size if size is not None else 0, NOISE_SIZE)
        if upper <= lowest + 1:
            raise InputError(f"The upper size threshold ({upper} px) leaves no cell to count: cells must be larger "
                             f"than {lowest} px (the size threshold, or deepliif's noise size) and smaller than it.")
    if t.marker not in (None, AUTO):
        marker = number(t.marker, "marker threshold")
        if not 0 <= marker <= 255:
            raise InputError(f"The marker threshold must lie between 0 and 255, not {marker}.")
    if t.split is not None:
        split = number(t.split, "split depth")
        if not 1 <= split <= MAX_SPLIT:
            raise InputError(f"The split depth must lie between 1 and {MAX_SPLIT} pixels (or no split), not {split}.")
    if t.grow is not None:
        grow = number(t.grow, "growth of the cells")
        if not 1 <= grow <= MAX_GROW:
            raise InputError(f"The growth of the cells must lie between 1 and {MAX_GROW} pixels (or none), not {grow}.")
    return t


MAX_SPLIT = 50  # px: deeper than any nucleus's distance transform at 40x; beyond it nothing would split
MAX_GROW = 10  # px: more would reach past a nucleus's neighbours at 40x
THRESHOLD_FIELDS = ("segmentation", "size", "size_upper", "marker", "split", "grow")


def is_model(value) -> bool:
    return isinstance(value, str) and value == MODEL


def model_thresholds(card) -> Thresholds:
    """The cell thresholds a model's card recommends; deepliif's defaults for what it does not say
    (a card without any, e.g. an official release folder's, gives deepliif's own)."""
    stored = getattr(card, "extra", {}).get(CARD_KEY) if card is not None else None
    if stored is None:
        return Thresholds()
    name = getattr(card, "name", "this model")
    if not isinstance(stored, dict):
        raise CheckpointError(f"The model card of {name!r} has unreadable cell thresholds ({stored!r}).")
    values = {k: stored[k] for k in THRESHOLD_FIELDS if k in stored}
    if any(is_model(v) for v in values.values()):
        raise CheckpointError(f"The model card of {name!r} leaves a cell threshold to the model itself.")
    try:
        return check_thresholds(Thresholds(**values))
    except InputError as err:
        raise CheckpointError(f"The model card of {name!r} has unusable cell thresholds: {err}") from None


def fill_model_values(thresholds: Thresholds, recommended: Thresholds) -> Thresholds:
    """``thresholds`` with every :data:`MODEL` value replaced by ``recommended``'s."""
    left = [k for k in THRESHOLD_FIELDS if is_model(getattr(thresholds, k))]
    return replace(thresholds, **{k: getattr(recommended, k) for k in left}) if left else thresholds


def resolve_model_values(thresholds: Thresholds, card) -> Thresholds:
    """``thresholds`` with every :data:`MODEL` value replaced by the card's (deepliif's default without one)."""
    if not any(is_model(getattr(thresholds, k)) for k in THRESHOLD_FIELDS):
        return thresholds  # the card is not even read
    return fill_model_values(thresholds, model_thresholds(card))


def _grey(rgb: np.ndarray) -> np.ndarray:
    """(Y, X, 3) uint8 rendering -> (Y, X) float32 intensity 0-255 (mean of R, G, B), for the table's means.

    The sum is taken in integers (exact) and divided once: bit for bit the float32 mean, about
    10x faster than numpy's reduction over a length-3 last axis (9 vs 0.9 ms on 576 x 576).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        return np.asarray(rgb, dtype=np.float32).mean(axis=-1)
    total = rgb[..., 0].astype(np.uint16)
    total += rgb[..., 1]
    total += rgb[..., 2]
    return total.astype(np.float32) / np.float32(3)


def marker_grey(rgb: np.ndarray) -> np.ndarray:
    """deepliif's grey marker value: the largest of R, G, B (``to_array(marker, grayscale=True)``)."""
    rgb = np.asarray(rgb)
    return rgb.max(axis=-1) if rgb.ndim == 3 else rgb


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
    """deepliif's 'default' size threshold: the first local minimum of a KDE of sqrt(area), bounded.

    ``areas``: the sizes of the cells deepliif considers (more than :data:`NOISE_SIZE` pixels).
    The KDE is deepliif's: 500 bins from 0 to max + 1, unit Gaussian bandwidth, values kept in
    float32 as deepliif keeps them (so plateaus far from every cell compare equal, as there).
    Returns a number of pixels; 0 for fewer than two cells.
    """
    areas = np.asarray(areas, dtype=np.float64)
    if areas.size <= 1:
        return 0
    if areas.size > MAX_KDE_CELLS:
        areas = np.random.default_rng(seed).choice(areas, MAX_KDE_CELLS, replace=False)
    values = np.sqrt(areas)
    step = (values.max() + 1) / KDE_BINS
    grid = np.arange(KDE_BINS) * step
    total = np.zeros(KDE_BINS)
    for chunk in np.array_split(values, max(1, values.size // 2000)):  # bounded memory
        total += np.exp(-0.5 * (grid[:, None] - chunk[None, :]) ** 2).sum(axis=1)
    kde = (total / np.sqrt(2 * np.pi) / values.size).astype(np.float32)
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


def auto_marker_threshold(marker: np.ndarray) -> int:
    """deepliif's automatic marker threshold: 90 % of the way through the 0.1-99.9 percentile range
    of the non-zero grey marker values (``marker``: grey values, or an RGB rendering)."""
    flat = np.asarray(marker_grey(np.asarray(marker))).ravel()
    nonzero = flat[flat != 0]
    if nonzero.size == 0:
        return 0
    low, high = (round(float(v)) for v in np.percentile(nonzero, [0.1, 99.9]))
    return int(round((high - low) * 0.9) + low)


@dataclass
class Classification:
    """The class of every cell (index = label id; index 0 unused) and the counts."""

    classes: np.ndarray  # uint8, EXCLUDED / NEGATIVE / POSITIVE per label id
    thresholds: Thresholds  # with the automatic values filled in
    resolution: str = "40x"

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
        """deepliif's scoring dict (same keys, same rounding) and the magnification used."""
        t = self.thresholds
        return {"num_total": self.total, "num_pos": self.positive, "num_neg": self.negative,
                "percent_pos": round(self.percent_positive, 1) if self.positive else 0,
                "seg_thresh": t.segmentation, "size_thresh": t.size, "size_thresh_upper": t.size_upper,
                "marker_thresh": t.marker, "resolution": self.resolution,
                **({} if t.split is None else {"split_depth": t.split}),  # deepliif's keys alone without a split
                **({} if t.grow is None else {"grow_px": t.grow})}


@dataclass
class CellAnalysis:
    """Instance labels and the per-cell table of one segmentation, ready for instant recounts."""

    labels: np.ndarray  # (Y, X) int32, 0 = background; ids in raster order of each region's first pixel
    table: dict[str, np.ndarray]  # one array per column, row i = label id i + 1
    segmentation_threshold: int
    auto_size: int
    auto_marker: int | None  # None when there is no marker image
    resolution: str = "40x"
    overrides: dict[int, int] = field(default_factory=dict)  # label id -> class chosen by hand
    split: int | None = None  # the split depth the labels were made with (None: deepliif's regions)
    grow: int | None = None  # the px the cells were grown by (None: not grown)

    @property
    def n_cells(self) -> int:
        return int(self.table["id"].size)

    def resolve(self, thresholds: Thresholds) -> Thresholds:
        """``thresholds`` with "auto" values replaced by the ones computed for this image."""
        marker = thresholds.marker
        if self.auto_marker is None:
            marker = None  # no marker image: deepliif reports no marker threshold either
        elif marker == AUTO:
            marker = self.auto_marker
        return replace(thresholds, segmentation=self.segmentation_threshold, split=self.split, grow=self.grow,
                       size=self.auto_size if thresholds.size in (None, AUTO) else int(thresholds.size),
                       marker=None if marker is None else int(marker))

    def classify(self, thresholds: Thresholds = Thresholds()) -> Classification:
        """Classes for every cell from the table alone (no pixels touched): microseconds."""
        t = self.resolve(thresholds)
        area = self.table["area"]
        kept = (area > NOISE_SIZE) & (area > t.size)
        if t.size_upper is not None:
            kept &= area < t.size_upper
        positive = self.table["positive_px"] >= self.table["negative_px"]
        if t.marker is not None:
            positive = positive | (self.table["marker_max"] > t.marker)
        classes = np.zeros(self.n_cells + 1, dtype=np.uint8)
        classes[1:] = np.where(kept, np.where(positive, POSITIVE, NEGATIVE), EXCLUDED)
        for label, cls in self.overrides.items():
            if 0 < label <= self.n_cells:
                classes[label] = cls
        return Classification(classes, t, self.resolution)

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


def _table(labels: np.ndarray, n: int, positive: np.ndarray, negative: np.ndarray,
           channels: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-cell columns from bincounts over the label image, strip by strip.

    ``channels`` maps column names to (Y, X, 3) uint8 array-likes (numpy, zarr, dask): each
    strip is read once and turned into a grey intensity there, so no full-size float copy
    of any channel ever exists.
    """
    sums = {key: np.zeros(n + 1) for key in ("area", "pos", "neg", "y", "x", *channels)}
    marker_max = np.zeros(n + 1)
    width = labels.shape[1]
    xs = np.arange(width, dtype=np.float64)
    for rows in _strips(labels.shape[0]):
        flat = labels[rows].ravel()
        ys = np.repeat(np.arange(rows.start, rows.stop, dtype=np.float64), width)
        sums["area"] += np.bincount(flat, minlength=n + 1)
        sums["pos"] += np.bincount(flat, weights=positive[rows].ravel(), minlength=n + 1)
        sums["neg"] += np.bincount(flat, weights=negative[rows].ravel(), minlength=n + 1)
        sums["y"] += np.bincount(flat, weights=ys, minlength=n + 1)
        sums["x"] += np.bincount(flat, weights=np.tile(xs, rows.stop - rows.start), minlength=n + 1)
        for name, rgb in channels.items():
            block = np.asarray(rgb[rows])
            sums[name] += np.bincount(flat, weights=_grey(block).ravel(), minlength=n + 1)
            if name == "marker":  # an unbuffered maximum per label: 30x faster than ndimage.maximum's sort
                np.maximum.at(marker_max, flat, marker_grey(block).ravel().astype(np.float64, copy=False))
    area = sums["area"][1:].astype(np.int64)
    safe = np.maximum(area, 1)
    pos, neg = sums["pos"][1:].astype(np.int64), sums["neg"][1:].astype(np.int64)
    table = {"id": np.arange(1, n + 1, dtype=np.int64), "area": area,
             "centroid_y": sums["y"][1:] / safe, "centroid_x": sums["x"][1:] / safe,
             "positive_px": pos, "negative_px": neg,
             "positive_fraction": np.where(pos + neg > 0, pos / np.maximum(pos + neg, 1), 0.0),
             "marker_max": marker_max[1:]}
    for name in CHANNEL_COLUMNS:
        table[f"mean_{name}"] = sums[name][1:] / safe if name in channels else np.full(n, np.nan)
    return table


def analyse_cells(segmentation, marker=None, modalities: dict[str, Any] | None = None,
                  segmentation_threshold: int = SEG_THRESHOLD_DEFAULT, resolution: str = "40x",
                  split: int | None = None, grow: int | None = None) -> CellAnalysis:
    """Label the cells of a fused segmentation RGB image and build their table.

    ``split``: cut touching nuclei inside a region at distance-transform peaks at least this
    many pixels deep (:func:`.deepliif_split.split_regions`); None (the default) keeps
    deepliif's regions. ``grow``: then grow every cell this many pixels into the background
    (:func:`.deepliif_grow.grow_cells`); its positive and negative pixels stay those of the map.

    ``marker`` and the entries of ``modalities`` ("hematoxylin", "dapi", "lap2", "marker")
    are the inferred RGB renderings (Y, X, 3) uint8 of the same region. All may be numpy,
    zarr or dask arrays; they are read strip by strip. Memory: the label image (4 bytes
    per pixel) and a few boolean maps.
    """
    if len(segmentation.shape) != 3 or segmentation.shape[-1] != 3:
        raise InputError(f"The segmentation must be an RGB image (Y, X, 3), not shape {tuple(segmentation.shape)}.")
    check_thresholds(Thresholds(segmentation=segmentation_threshold, split=split, grow=grow))
    if resolution not in AUTO_SIZE_SQRT:
        raise InputError(f"The magnification must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}.")
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
    # scipy numbers regions in raster order of their first pixel: deepliif's order of cells
    labels, n = ndimage.label(regions, structure=np.ones((3, 3), dtype=bool))
    del regions
    labels = labels.astype(np.int32, copy=False)
    if split is not None:
        from .deepliif_split import split_regions  # here: scikit-image loads only when a model asks for it

        labels = split_regions(labels, split)
        n = int(labels.max(initial=0))
    if grow is not None:
        from .deepliif_grow import grow_cells

        labels = grow_cells(labels, grow)
    table = _table(labels, n, positive, cell & ~positive, channels)
    auto_marker = None
    if "marker" in channels:  # beyond 16 megapixels a regular subsample gives the same percentiles
        step = max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / (1 << 24)))))
        auto_marker = auto_marker_threshold(np.asarray(channels["marker"][::step, ::step]))
    auto_size = auto_size_threshold(table["area"][table["area"] > NOISE_SIZE], resolution)
    return CellAnalysis(labels, table, int(segmentation_threshold), auto_size, auto_marker, resolution,
                        split=None if split is None else int(split), grow=None if grow is None else int(grow))


def classify_cells(segmentation: np.ndarray, marker: np.ndarray | None = None,
                   thresholds: Thresholds = Thresholds(), resolution: str = "40x") -> tuple[CellAnalysis, Classification]:
    """Convenience: analyse and classify in one call."""
    analysis = analyse_cells(segmentation, marker, segmentation_threshold=thresholds.segmentation,
                             resolution=resolution, split=thresholds.split, grow=thresholds.grow)
    return analysis, analysis.classify(thresholds)


def class_image(analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """(Y, X) uint8 class of every pixel (0 background or excluded, 1 negative, 2 positive)."""
    return classification.classes[analysis.labels]


def class_names(classification: Classification) -> np.ndarray:
    """Class name per cell (row i = label id i + 1)."""
    lookup = np.array([CLASS_NAMES[EXCLUDED], CLASS_NAMES[NEGATIVE], CLASS_NAMES[POSITIVE]], dtype=object)
    return lookup[classification.classes[1:]]


def render_classified_mask(analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """deepliif's SegRefined image (see :mod:`.deepliif_render`)."""
    from .deepliif_render import render_refined

    return render_refined(analysis, classification)
