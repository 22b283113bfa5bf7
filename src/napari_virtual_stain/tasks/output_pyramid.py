"""Outputs of a pyramid input as pyramids of their own, drawn exactly over the input's levels.

A result predicted at level ``k`` of an input pyramid covers a box of that level's pixels.
Shown as a single-scale layer, napari draws all of it at every zoom (a whole slide's result
at full resolution would be drawn from gigabytes). Here the result gets the input's coarser
levels too: output level ``j`` is the block mean of the result over ``r_j`` x ``r_j`` pixels,
``r_j`` the (integer) factor of input level ``k + j`` over level ``k``. Block means are cheap
(numpy for results in memory) or lazy (dask, for results kept in zarr stores).

Why the boxes are aligned: napari draws pixel ``i`` of a level at ``i * f`` of its layer's
first level, ``f`` the ratio of the two levels' shapes. An output level's pixel ``i`` lies
exactly on the input level's pixel ``start / r + i`` when the result's ``start`` is a
multiple of ``r`` and its size is too (or it ends where the image ends, as the input's
own levels do). :func:`align_region` grows a view's box to such multiples (at most
``r - 1`` pixels a side, real predictions); :func:`usable_ratios` drops levels whose
blocks a box does not start on. No Qt and no napari here: the docks place the results.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .region import Region

# A current view's output gets coarser levels up to this factor over the level it was
# predicted at: its box grows by at most this minus one pixels a side to align with them
# (3% more pixels for a 1024-pixel view). Zoomed out further, napari shows the coarsest.
MAX_VIEW_RATIO = 16
# Factors between napari's levels come from shape ratios (1000 / 63 = 15.9): within this
# relative distance of an integer they are that integer; further, the pyramid stops there.
RATIO_TOLERANCE = 0.1
IN_PLANE = 2  # levels are downsampled over Y and X; other axes keep every plane


def level_ratios(downsample: Sequence[Sequence[float]], level: int,
                 max_ratio: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Integer factors of the levels from ``level`` on over ``level`` (the first all ones), per axis.

    ``downsample``: each level's factor per spatial axis over the full resolution (napari's
    ``downsample_factors``). Only the last two axes (Y, X) are downsampled. The list stops at
    a level whose factor is not close to an integer, does not grow, or passes ``max_ratio``.
    """
    factors = np.asarray(downsample, dtype=float)
    n_axes = factors.shape[1]
    ratios = [(1,) * n_axes]
    for m in range(int(level) + 1, len(factors)):
        exact = factors[m, -IN_PLANE:] / factors[level, -IN_PLANE:]
        whole = np.maximum(np.round(exact), 1)
        if np.any(np.abs(exact - whole) > RATIO_TOLERANCE * whole):
            break
        ratio = (1,) * (n_axes - len(whole)) + tuple(int(r) for r in whole)
        previous = ratios[-1]
        if any(r < p for r, p in zip(ratio, previous)) or ratio == previous:
            break
        if max_ratio is not None and max(ratio) > max_ratio:
            break
        ratios.append(ratio)
    return tuple(ratios)


def alignment(ratios: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The multiple (per axis) every level's blocks start on: the least common multiple of the factors."""
    return tuple(math.lcm(*(int(r[a]) for r in ratios)) for a in range(len(ratios[0])))


def align_region(region: Region, multiple: Sequence[int], spatial_shape: Sequence[int]) -> Region:
    """``region`` grown outwards to multiples of ``multiple`` per axis (clipped to the image)."""
    start = tuple(a // m * m for a, m in zip(region.start, multiple))
    stop = tuple(min(int(s), -(-b // m) * m) for b, m, s in zip(region.stop, multiple, spatial_shape))
    return Region(start, stop)


def usable_ratios(ratios: Sequence[Sequence[int]], start: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The leading ``ratios`` whose blocks a box starting at ``start`` begins on (the first is always kept)."""
    kept = [tuple(ratios[0])]
    for ratio in ratios[1:]:
        if any(int(s) % int(r) for s, r in zip(start, ratio)):
            break
        kept.append(tuple(ratio))
    return tuple(kept)


def _is_lazy(array) -> bool:
    return not isinstance(array, np.ndarray)


def block_mean(array, factors: dict[int, int]):
    """Means over blocks of ``factors[axis]`` pixels along each axis given (partial blocks at
    the end: the mean of the pixels they hold). Integer data is rounded back to its type.
    numpy arrays give numpy arrays; anything else (dask, zarr) a lazy dask array."""
    factors = {int(a) % array.ndim: int(f) for a, f in factors.items() if int(f) > 1}
    if not factors:
        return array
    dtype = np.dtype(array.dtype)
    if _is_lazy(array):
        import dask.array as da

        pad = [(0, (-n) % factors.get(a, 1)) for a, n in enumerate(array.shape)]
        values = da.asarray(array).astype(np.float32)
        if any(p for _, p in pad):
            values = da.pad(values, pad)
        summed = da.coarsen(np.sum, values, {a: factors.get(a, 1) for a in range(array.ndim)})
    else:
        # Sums of blocks one axis at a time (the last block may be partial): no padded or
        # float copy of a large result, the first sum is already 1/f of its size.
        summed = array
        for a, f in factors.items():
            summed = np.add.reduceat(summed, np.arange(0, summed.shape[a], f), axis=a, dtype=np.float32)
    counts = np.ones((1,) * array.ndim, dtype=np.float32)
    for a, f in factors.items():
        n = array.shape[a]
        along = np.minimum(f, n - np.arange(-(-n // f)) * f).astype(np.float32)
        counts = counts * along.reshape([-1 if i == a else 1 for i in range(array.ndim)])
    mean = summed / counts
    if dtype.kind in "uib":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        rounded = mean.round()
        if info is not None:
            rounded = rounded.clip(info.min, info.max)
        return rounded.astype(dtype)
    return mean.astype(np.float32) if dtype.kind == "f" else mean


def pyramid_of(array, ratios: Sequence[Sequence[int]], axes: Sequence[int]) -> list:
    """``array`` and its block means over ``axes`` by each of ``ratios`` after the first."""
    return [array] + [block_mean(array, dict(zip(axes, ratio))) for ratio in ratios[1:]]


def as_pyramids(tuples: Sequence[tuple], ratios: Sequence[Sequence[int]], start: Sequence[int]) -> list[tuple]:
    """Image LayerDataTuples of one result (its box starting at ``start`` of the run's level)
    as multiscale ones: the levels :func:`usable_ratios` allows, over the images' spatial axes
    (the last ones; before the colour axis of RGB images). Other layer kinds pass unchanged."""
    ratios = usable_ratios(ratios, start)
    out = []
    for data, kwargs, kind in tuples:
        if kind != "image":
            out.append((data, kwargs, kind))
            continue
        n = len(ratios[0])
        last = data.ndim - (1 if kwargs.get("rgb") else 0)
        axes = tuple(range(last - n, last))
        out.append((pyramid_of(data, ratios, axes), dict(kwargs, multiscale=True), kind))
    return out
