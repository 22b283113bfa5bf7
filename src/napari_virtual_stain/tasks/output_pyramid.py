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


def _factors(array, factors: dict[int, int]) -> dict[int, int]:
    return {int(a) % array.ndim: int(f) for a, f in factors.items() if int(f) > 1}


def _block_sums(array, factors: dict[int, int]):
    """Sums (float32) over blocks of ``factors[axis]`` pixels, the last block of an axis partial."""
    if _is_lazy(array):
        import dask.array as da

        pad = [(0, (-n) % factors.get(a, 1)) for a, n in enumerate(array.shape)]
        values = da.asarray(array).astype(np.float32)
        if any(p for _, p in pad):
            values = da.pad(values, pad)
        return da.coarsen(np.sum, values, {a: factors.get(a, 1) for a in range(array.ndim)})
    # One axis at a time: no padded or float copy of a large result (the first sum is 1/f of it).
    summed = array
    for a, f in factors.items():
        summed = np.add.reduceat(summed, np.arange(0, summed.shape[a], f), axis=a, dtype=np.float32)
    return summed


def _mean(sums, shape: Sequence[int], factors: dict[int, int], dtype: np.dtype):
    """Block sums over an array of ``shape`` -> means in ``dtype`` (integers rounded and clipped)."""
    counts = np.ones((1,) * len(shape), dtype=np.float32)
    for a, f in factors.items():
        n = int(shape[a])
        along = np.minimum(f, n - np.arange(-(-n // f)) * f).astype(np.float32)
        counts = counts * along.reshape([-1 if i == a else 1 for i in range(len(shape))])
    mean = sums / counts
    if dtype.kind in "uib":
        rounded = mean.round()
        if dtype.kind != "b":
            info = np.iinfo(dtype)
            rounded = rounded.clip(info.min, info.max)
        return rounded.astype(dtype)
    return mean.astype(np.float32) if dtype.kind == "f" else mean


def block_mean(array, factors: dict[int, int]):
    """Means over blocks of ``factors[axis]`` pixels along each axis given (partial blocks at
    the end: the mean of the pixels they hold). Integer data is rounded back to its type.
    numpy arrays give numpy arrays; anything else (dask, zarr) a lazy dask array."""
    factors = _factors(array, factors)
    if not factors:
        return array
    return _mean(_block_sums(array, factors), array.shape, factors, np.dtype(array.dtype))


def pyramid_of(array, ratios: Sequence[Sequence[int]], axes: Sequence[int]) -> list:
    """``array`` and its block means over ``axes`` by each of ``ratios`` after the first.

    Each level's block sums come from the previous level's when its factors divide the
    next ones (x2 pyramids): every pixel is summed once, not once per level.
    """
    levels, sums, done = [array], array, {}
    for ratio in ratios[1:]:
        factors = _factors(array, dict(zip(axes, ratio)))
        step = {a: f // done.get(a, 1) for a, f in factors.items()}
        if any(f % done.get(a, 1) for a, f in factors.items()) or any(a not in factors for a in done):
            sums, step = array, factors  # not nested: from the full level
        sums = _block_sums(sums, step) if step else sums
        done = factors
        levels.append(_mean(sums, array.shape, factors, np.dtype(array.dtype)) if factors else array)
    return levels


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
