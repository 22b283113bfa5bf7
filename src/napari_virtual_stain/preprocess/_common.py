"""Checks and intensity-range helpers shared by the preprocessing functions.

Every preprocessing function computes in float32 and returns a new array; these helpers
validate the input once (shape, NaNs, constant images), work out the range a corrected
image may take, and cast a result back to the input's dtype when the caller wants that.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def checked_float_image(image, *, min_ndim: int = 2, what: str = "image") -> np.ndarray:
    """Return ``image`` as a new float32 array after the checks every function needs.

    Raises InputError for non-numeric data, too few axes, NaN/infinite values or a
    constant image (nothing to correct or score).
    """
    array = np.asarray(image)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number)):
        raise InputError(f"The {what} has {array.dtype} values: a numeric image is needed.")
    if np.iscomplexobj(array):
        raise InputError(f"The {what} has complex values: a real-valued image is needed.")
    if array.ndim < min_ndim:
        raise InputError(
            f"The {what} has {array.ndim} axes (shape {array.shape}): at least {min_ndim} are needed."
        )
    if array.size == 0:
        raise InputError(f"The {what} is empty (shape {array.shape}).")
    values = array.astype(np.float32)  # always a copy: inputs are never modified
    if not np.all(np.isfinite(values)):
        n_bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InputError(
            f"The {what} contains {n_bad} NaN or infinite pixel(s): fill or crop them first."
        )
    if values.min() == values.max():
        raise InputError(
            f"The {what} is constant (every pixel is {values.flat[0]:g}): there is nothing to work on."
        )
    return values


def valid_range(dtype, data_min: float) -> tuple[float | None, float | None]:
    """The range a corrected image may take: ``(low, high)``, None meaning unbounded.

    Integer images keep their dtype's range (unsigned ones cannot go below 0). Float
    images that were non-negative stay non-negative (intensities are counts or light);
    float images that already had negative values are not clipped.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return (0.0 if data_min >= 0 else None), None


def clip_to_range(values: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """Clip in place where a bound exists and return ``values``."""
    if low is not None or high is not None:
        np.clip(values, low, high, out=values)
    return values


def cast_like(result, dtype) -> np.ndarray:
    """Cast a float result back to ``dtype`` (e.g. the input's), rounding and clipping integers.

    Use it to save or display a corrected image in its original type: a uint16 image
    corrected in float32 comes back as uint16 with values rounded and kept in 0..65535.
    """
    dtype = np.dtype(dtype)
    values = np.asarray(result)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def as_planes(values: np.ndarray) -> np.ndarray:
    """View ``(..., Y, X)`` as ``(P, Y, X)``: every leading index is one independent plane."""
    return values.reshape((-1,) + values.shape[-2:])


def channels_first(image, rgb: bool) -> np.ndarray:
    """``(Y, X, 3|4)`` RGB(A) -> ``(C, Y, X)``; anything else is returned as is."""
    array = np.asarray(image)
    return np.moveaxis(array, -1, 0) if rgb else array


def channels_last(image, rgb: bool) -> np.ndarray:
    """Inverse of :func:`channels_first`."""
    array = np.asarray(image)
    return np.moveaxis(array, 0, -1) if rgb else array
