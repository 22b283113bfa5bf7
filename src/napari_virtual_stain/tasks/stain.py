"""Virtual staining: a label-free image (or tissue photograph) -> fluorescence channels.

The task adds nothing to the engine but the choice of region: it reads the region
(plus a margin of real context, so the view's border pixels are predicted as they would
be in a whole-image run), runs the Predictor, and crops the margin off again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..engine.normalise import compute_stats, flat_channels_warning
from ..engine.predictor import Predictor
from ..models.card import ModelCard
from ..models.zwindow import z_window
from .arrays import Layout, layout_for, nan_fraction, to_channels_first
from .region import Region
from .view_cache import ViewCache, nearest_first


@dataclass
class StainResult:
    data: np.ndarray  # (C_out, *region.shape) float32
    channels: list[str]
    region: Region
    layout: Layout
    card: ModelCard
    nan_fraction: float  # share of non-finite input pixels (treated as 0 by the engine)
    stats: dict  # the input normalisation statistics used (of the whole image): reuse them
    warnings: list[str] = field(default_factory=list)  # sentences to show the user (flat channels, seams)


def context_margin(card: ModelCard, spatial_ndim: int) -> tuple[int, ...]:
    """Context read around a region: the model's tile overlap, per spatial axis.

    A 2D model on a stack gets no margin along z: planes are independent for it; a 2.5D
    model gets the planes its window reaches on either side.
    """
    overlap = list(card.overlap)
    if card.spatial_dims == 2 and spatial_ndim == 3:
        window = z_window(card)
        overlap = [0 if window is None else max(window.below, window.above)] + overlap
    return tuple(int(o) for o in overlap)


def _on_grid(box: Region, spatial: tuple[int, ...], multiple: int) -> Region:
    """``box`` grown outwards in Y and X to multiples of ``multiple`` (clipped to the image).

    A network that pools (or, with a space-to-depth stem, groups pixels) in blocks of
    ``multiple`` pixels sees a shifted image differently: a whole-image run's tiles start on
    multiples of it (their steps are multiples), so a view's tiles must too, or the view
    differs from the whole run by more than blending (0.12 instead of 0.03 for a 4x4 stem).
    """
    if multiple <= 1:
        return box
    start, stop = list(box.start), list(box.stop)
    for axis in (-2, -1):
        start[axis] = start[axis] // multiple * multiple
        stop[axis] = min(spatial[axis], -(-stop[axis] // multiple) * multiple)
    return Region(tuple(start), tuple(stop))


def _read_box(card: ModelCard, region: Region, spatial: tuple[int, ...], multiple: int = 1) -> Region:
    """The region plus its context margin, on the network's pixel grid; for a 2.5D model at least a
    window of planes deep."""
    outer = _on_grid(region.grow(context_margin(card, len(spatial)), spatial), spatial, multiple)
    window = z_window(card)
    if window is None or len(spatial) != 3 or outer.shape[0] >= window.planes:
        return outer
    # Near an end of the stack the margin is cut off: take the missing planes from the other side
    # (the stack holds them whenever it is deep enough for the model at all; the Predictor says so if not).
    start = max(0, min(outer.start[0], spatial[0] - window.planes))
    stop = min(spatial[0], max(outer.stop[0], start + window.planes))
    return Region((start,) + outer.start[1:], (stop,) + outer.stop[1:])


def edge_planes_warning(card: ModelCard, region: Region, spatial: tuple[int, ...]) -> str | None:
    """A sentence when a 2.5D model predicted planes whose window reaches past the stack's ends."""
    window = z_window(card)
    if window is None or len(spatial) != 3 or spatial[0] < window.planes:
        return None
    short = [z for z in range(region.start[0], region.stop[0]) if not window.is_full(z, spatial[0])]
    if not short:
        return None
    return (f"{len(short)} plane(s) near the ends of the stack ({', '.join(map(str, short[:6]))}"
            f"{'...' if len(short) > 6 else ''}) lack the {window.below} plane(s) before or {window.above} after that "
            "this 2.5D model reads: the end planes were repeated there, so those planes are less reliable.")


def run_stain(predictor: Predictor, layer_data, *, rgb: bool = False, name: str = "image",
              region: Region | None = None, stats: dict | None = None,
              progress: Callable[[int, int], None] | None = None, cancel=None, tta: bool | None = None) -> StainResult:
    """Predict the model's output channels for ``region`` of a layer's data (all of it by default).

    Normalisation statistics come from the whole image (or ``stats``, computed earlier for
    it), so a region is predicted exactly as it would be in a whole-image run. ``tta``:
    test-time augmentation (default: the predictor's).
    """
    card = predictor.card
    layout = layout_for(layer_data, card, rgb, name)
    image = to_channels_first(layer_data, layout)
    spatial = tuple(image.shape[1:])
    region = region or Region.whole(spatial)
    outer = _read_box(card, region, spatial, predictor.size_multiple)
    if stats is None:
        stats = compute_stats(image, card.input_normalisation)
    block = image[(slice(None),) + outer.slices]
    if not isinstance(block, np.ndarray) and outer.shape != spatial:
        block = np.asarray(block)  # a view of a lazy array: small enough to hold
    inner_box = region.relative_to(outer)
    if z_window(card) is not None and len(spatial) == 3:
        # The planes around the region are a 2.5D model's context only: predict just the region's planes.
        out = predictor.predict(block, progress=progress, cancel=cancel, stats=stats, tta=tta, planes=inner_box[0])
        inner_box = (slice(None),) + inner_box[1:]
    else:
        out = predictor.predict(block, progress=progress, cancel=cancel, stats=stats, tta=tta)
    inner = np.ascontiguousarray(np.asarray(out)[(slice(None),) + inner_box])
    frac = nan_fraction(block) if isinstance(block, np.ndarray) else 0.0
    warnings = [w for w in [flat_channels_warning(stats, list(card.input_channels)), edge_planes_warning(card, region, spatial)]
                if w] + list(predictor.warnings)
    return StainResult(inner, list(card.output_channels), region, layout, card, frac, stats, warnings)


def run_stain_reusing(predictor: Predictor, layer_data, cache: ViewCache, region: Region, *, rgb: bool = False,
                      name: str = "image", stats: dict | None = None,
                      progress: Callable[[int, int], None] | None = None, cancel=None,
                      tta: bool | None = None, block: int | None = None,
                      on_part: Callable[[Region, np.ndarray], None] | None = None) -> StainResult:
    """:func:`run_stain` on ``region``, predicting only the pixels ``cache`` does not know yet.

    ``cache`` must have been filled with the same ``tta`` (the caller keys it on its settings).

    Each missing box is predicted as its own region (real context, whole-image statistics),
    so the assembled view equals a fresh prediction of the whole view. With ``block``, the
    missing boxes are cut into blocks of at most that many pixels along Y and X and predicted
    nearest the view's centre first; ``on_part(box, values)`` hears of each finished box, so a
    viewer can show the view filling in while the rest is computed.
    """
    card = predictor.card
    layout = layout_for(layer_data, card, rgb, name)
    parts = cache.missing(region)
    if block is not None:
        parts = nearest_first(parts, region, block)
    frac, warnings = 0.0, []
    for k, part in enumerate(parts):
        def part_progress(done, total, k=k):
            if progress is not None:
                progress(k * 1000 + int(1000 * done / max(total, 1)), len(parts) * 1000)
        result = run_stain(predictor, layer_data, rgb=rgb, name=name, region=part, stats=stats,
                           progress=part_progress, cancel=cancel, tta=tta)
        stats, warnings = result.stats, result.warnings
        frac = max(frac, result.nan_fraction)
        cache.store(part, result.data)
        if on_part is not None:
            on_part(part, result.data)
    if stats is None:  # everything was known: the statistics are those the cache was filled with
        raise ValueError("a cache that knows the region needs the statistics it was filled with")
    return StainResult(cache.read(region), list(card.output_channels), region, layout, card, frac, stats, warnings)
