"""Which level of an image pyramid a run predicts at, and statistics that never read the full resolution.

A pyramid is a list of arrays (full resolution first, as napari's multiscale layers hold
them) with each level's downsample factor per spatial axis. Two choices are made here from
plain numbers, so the core never needs napari:

- :func:`choose_level`: the level a current view is predicted at. No finer than the level
  napari displays (a zoomed-out view never reads the full resolution), and, when both the
  model and the image know their pixel size, the allowed level whose pixel size is closest
  to the model's (the network sees the scale it was trained on; zoomed in past it, the
  coarser model-scale level is also less work).
- :func:`pyramid_stats`: whole-image normalisation statistics from a low-resolution level.
  Percentiles of a level with about a million pixels agree with those of the full
  resolution on real tissue to well within a display grey level, and a slide's full
  resolution (10^9-10^10 pixels, on disk) is never read for them. Every level of the pyramid
  is then normalised with the same numbers, so views at different levels agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..engine.normalise import compute_stats
from ..models.card import ModelCard
from .arrays import layout_for, to_channels_first

# Statistics come from the coarsest level with at least this many pixels (spatial values):
# enough for the 1st and 99.8th percentiles to be well sampled (2000+ values beyond each).
MIN_STATS_PIXELS = 1 << 20

# A chosen level whose pixel size is further than this factor from the model's gets a sentence.
PIXEL_SIZE_TOLERANCE = 1.5


@dataclass(frozen=True)
class LevelChoice:
    level: int
    pixel_size_um: float | None  # of the chosen level (in-plane), when the image knows its own
    note: str | None = None  # a sentence for the user when the model's scale could not be met


def _in_plane(downsample: Sequence[float]) -> float:
    """A level's in-plane factor: the mean over the last two spatial axes (Y and X)."""
    factors = [float(f) for f in downsample][-2:]
    return sum(factors) / len(factors)


def choose_level(downsample: Sequence[Sequence[float]], displayed: int, image_pixel_size_um: float | None = None,
                 model_pixel_size_um: float | None = None) -> LevelChoice:
    """The level to predict at: ``displayed`` or a coarser one nearer the model's pixel size.

    ``downsample``: each level's factor per spatial axis (1, 2, 4 ... for a x2 pyramid);
    ``displayed``: the level napari shows; the pixel sizes are in-plane, in micrometres, of
    the full resolution and of the model's training data (None: unknown, use ``displayed``).
    """
    n = len(downsample)
    displayed = int(min(max(displayed, 0), n - 1))
    if not image_pixel_size_um or not model_pixel_size_um:
        size = image_pixel_size_um * _in_plane(downsample[displayed]) if image_pixel_size_um else None
        return LevelChoice(displayed, size)
    sizes = [image_pixel_size_um * _in_plane(d) for d in downsample]
    # Scales are compared as ratios (log distance): 0.25 um is as far from 0.5 um as 1 um is.
    # Ties go to the finer level (the first): more detail for the same distance.
    level = min(range(displayed, n), key=lambda k: abs(math.log(sizes[k] / model_pixel_size_um)))
    note = None
    ratio = sizes[level] / model_pixel_size_um
    if ratio > PIXEL_SIZE_TOLERANCE and level > 0:  # then level == displayed: coarser ones are further still
        note = (f"The view was predicted at pyramid level {level} ({sizes[level]:.3g} µm per pixel) while the model "
                f"expects {model_pixel_size_um:.3g} µm per pixel: zoom in for a prediction at the model's scale.")
    elif ratio > PIXEL_SIZE_TOLERANCE:
        note = (f"The image's finest level has {sizes[level]:.3g} µm pixels, coarser than the model's "
                f"{model_pixel_size_um:.3g} µm: the pyramid has no level at the model's scale.")
    elif ratio < 1 / PIXEL_SIZE_TOLERANCE:
        note = (f"The pyramid's coarsest level has {sizes[level]:.3g} µm pixels, finer than the model's "
                f"{model_pixel_size_um:.3g} µm: the pyramid has no level at the model's scale.")
    return LevelChoice(level, sizes[level], note)


def stats_level(level_shapes: Sequence[Sequence[int]], spatial_ndim: int, min_pixels: int = MIN_STATS_PIXELS) -> int:
    """The coarsest level with at least ``min_pixels`` spatial values (the finest when none has)."""
    counts = [math.prod(int(s) for s in shape[-spatial_ndim:]) for shape in level_shapes]
    enough = [k for k, c in enumerate(counts) if c >= min_pixels]
    return enough[-1] if enough else 0


def pyramid_stats(levels: Sequence, card: ModelCard, *, rgb: bool = False, name: str = "image",
                  min_pixels: int = MIN_STATS_PIXELS) -> dict:
    """Whole-image normalisation statistics of a pyramid for ``card``, from :func:`stats_level`.

    A single-level "pyramid" gives exactly the statistics of a whole-image run.
    """
    layout = layout_for(levels[0], card, rgb, name)
    shapes = [layout.spatial_shape(tuple(level.shape)) for level in levels]
    level = levels[stats_level(shapes, layout.spatial_ndim, min_pixels)]
    return compute_stats(to_channels_first(level, layout), card.input_normalisation)

