"""Preprocessing the papers rely on, before virtual staining.

* :func:`correct_tile_shadow` — the shadow repeated in every camera tile of a stitched
  image (paper 000), estimated from the emptiest tiles and subtracted on the tile grid.
* :func:`correct_flatfield` — uneven illumination of an untiled image (smooth background,
  divided out or subtracted).
* :func:`select_in_focus` / :func:`plls_scores` — in-focus z-planes by the power-spectrum
  log-log slope (paper 002).
* :func:`cast_like` — a float32 result back to the input's dtype.

Percentile normalisation per channel lives in :mod:`napari_virtual_stain.engine.normalise`
(the Predictor uses it); it is not duplicated here.

All functions take numpy arrays (channels first), return new arrays and never modify
their input. No Qt here.
"""

from ._common import cast_like
from .flatfield import FlatFieldResult, correct_flatfield, estimate_background
from .focus import FocusSelection, plls, plls_scores, radial_power_spectrum, rank_planes, select_in_focus
from .tile_shadow import (
    TileShadowResult,
    correct_tile_shadow,
    estimate_artifact,
    pick_empty_tiles,
    subtract_artifact,
    tile_emptiness,
)

__all__ = [
    "FlatFieldResult",
    "FocusSelection",
    "TileShadowResult",
    "cast_like",
    "correct_flatfield",
    "correct_tile_shadow",
    "estimate_artifact",
    "estimate_background",
    "pick_empty_tiles",
    "plls",
    "plls_scores",
    "radial_power_spectrum",
    "rank_planes",
    "select_in_focus",
    "subtract_artifact",
    "tile_emptiness",
]
