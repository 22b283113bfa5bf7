"""Flat-field correction for images that are not tiled: divide or subtract a smooth background.

Uneven illumination (vignetting, a tilted lamp, a gradient across a slide) is a smooth
background that multiplies (bright-field, fluorescence excitation) or adds to (stray
light, autofluorescence haze) the signal. It is estimated from the image itself:

* ``"gaussian"``: a Gaussian blur with ``sigma`` pixels. Fine when the objects are
  small compared with ``sigma`` and cover a modest part of the field.
* ``"opening"``: a grey-level opening with a square of side ``2 * sigma + 1`` (a
  "rolling ball"-like filter that cuts away bright objects narrower than the square),
  then a Gaussian blur of ``sigma / 4`` to smooth its blocky result. Better for
  fluorescence, where bright cells would otherwise leak into the background.

The correction keeps the mean intensity of every plane: ``"divide"`` returns
``image / background`` rescaled to the image's mean; ``"subtract"`` returns
``image - background + mean(background)``. Each 2D plane (every channel, every z) is
corrected on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError, check_cancel
from ._common import as_planes, checked_float_image, clip_to_range, valid_range

MODES = ("divide", "subtract")
METHODS = ("gaussian", "opening")
# In divide mode the background is floored at this fraction of its maximum: dark
# corners with (almost) no light must not blow up into noise.
DIVIDE_FLOOR = 1e-3


@dataclass
class FlatFieldResult:
    """``corrected`` and ``background``: float32 arrays of the input's shape."""

    corrected: np.ndarray
    background: np.ndarray


def estimate_background(plane: np.ndarray, sigma: float, method: str = "gaussian") -> np.ndarray:
    """The smooth background of one 2D plane (float32, same shape)."""
    if method not in METHODS:
        raise InputError(f"The background method must be 'gaussian' or 'opening', not {method!r}.")
    values = np.asarray(plane, dtype=np.float32)
    if method == "gaussian":
        return ndi.gaussian_filter(values, sigma, mode="reflect")
    size = 2 * int(round(sigma)) + 1
    opened = ndi.grey_opening(values, size=(size, size), mode="reflect")
    return ndi.gaussian_filter(opened, max(sigma / 4.0, 0.5), mode="reflect")


def correct_flatfield(
    image,
    *,
    sigma: float = 50.0,
    mode: str = "divide",
    method: str = "gaussian",
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> FlatFieldResult:
    """Estimate a smooth background per 2D plane and divide it out or subtract it.

    ``image``: ``(Y, X)`` or ``(..., Y, X)``; ``sigma`` in pixels, larger than the objects.
    Returns float32 arrays; the corrected image is clipped to the input's valid range
    (non-negative images stay non-negative, integers within their dtype) and keeps each
    plane's mean intensity (exactly, unless that clipping cuts values). The input is not
    modified.
    """
    if mode not in MODES:
        raise InputError(f"The flat-field mode must be 'divide' or 'subtract', not {mode!r}.")
    if method not in METHODS:  # checked here too: before the image is copied
        raise InputError(f"The background method must be 'gaussian' or 'opening', not {method!r}.")
    if not np.isfinite(sigma) or sigma <= 0:
        raise InputError(f"The background smoothing (sigma) must be a positive number of pixels, not {sigma:g}.")
    source = np.asarray(image)
    values = checked_float_image(source)
    if mode == "divide" and values.min() < 0:
        raise InputError(
            "The image has negative values, so it cannot be divided by its background: "
            "use the 'subtract' mode."
        )
    planes = as_planes(values)  # views: corrected in place
    background = np.empty_like(values)
    background_planes = as_planes(background)
    for index, plane in enumerate(planes):
        check_cancel(cancel)
        background_planes[index] = estimate_background(plane, sigma, method)
        _correct_plane(plane, background_planes[index], mode)
        if progress is not None:
            progress(index + 1, planes.shape[0])
    clip_to_range(values, *valid_range(source.dtype, float(source.min())))
    return FlatFieldResult(corrected=values, background=background)


def _correct_plane(plane: np.ndarray, background: np.ndarray, mode: str) -> None:
    """Correct ``plane`` in place so that its mean intensity is unchanged."""
    if mode == "subtract":
        plane -= background - background.mean()
        return
    mean_before = plane.mean()
    floor = max(float(background.max()) * DIVIDE_FLOOR, np.finfo(np.float32).tiny)
    plane /= np.maximum(background, floor)
    mean_after = plane.mean()
    if mean_after > 0:  # an all-zero plane stays zero
        plane *= mean_before / mean_after
