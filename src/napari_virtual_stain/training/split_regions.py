"""The training/validation split of one image, by region: never by random pixels, so no training
crop overlaps a validation tile (see ``datasets``)."""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import InputError
from .pair_checks import layer_size_text, size_text

# The validation band is at least this high (or one patch, if the patch is smaller), so
# a 15% band of a 384-pixel image is not inflated to a whole 128-pixel patch.
MIN_VAL_SIZE = 32


def split_regions(spatial: Sequence[int], patch: Sequence[int], val_fraction: float,
                  name: str = "the layer") -> tuple[tuple[slice, ...], tuple[slice, ...] | None]:
    """Training and validation regions of one image, as tuples of spatial slices.

    The validation region is the last ``val_fraction`` of the Y axis, at least
    ``min(patch, MIN_VAL_SIZE)`` high; if Y cannot also hold a training patch, the X axis
    is split instead.
    ``val_fraction`` 0 gives no validation region.
    """
    full = tuple(slice(0, int(s)) for s in spatial)
    if val_fraction <= 0:
        return full, None
    if val_fraction >= 1:
        raise InputError(f"The validation fraction must be below 1, not {val_fraction}.")
    n = len(spatial)
    for axis in (n - 2, n - 1):
        length, size = int(spatial[axis]), int(patch[axis])
        val_len = max(int(math.ceil(val_fraction * length)), min(size, MIN_VAL_SIZE))
        if length - val_len >= size:
            cut = length - val_len
            train = full[:axis] + (slice(0, cut),) + full[axis + 1:]
            val = full[:axis] + (slice(cut, length),) + full[axis + 1:]
            return train, val
    raise InputError(f"'{name}' is {layer_size_text(spatial)}: too small to hold a {size_text(patch)} training patch and a "
                     "separate validation region; use a smaller patch, a larger layer or no validation.")


def _grid_starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
