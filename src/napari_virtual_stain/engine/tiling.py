"""The tile grid, the blend windows, and the strip-by-strip blending of tile outputs.

Tiles step by ``tile - overlap``; the last tile on each axis is flush with the image end, so
every tile lies inside the image (no padding except for images smaller than a tile).
:func:`fit_tile` shrinks the tile to the image where that saves work.

Tile outputs are blended with smooth windows (:func:`blend_profile`): near 0 at a tile edge
inside the image (those pixels saw the least context), a raised-cosine ramp in the middle of
the overlap, 1 inside and on the image border, never exactly 0. Blending is a weighted
average: because the windows are outer products of 1D profiles and the grid is a product of
1D grids, the sum of weights at a pixel is a product of 1D sums, so every tile's weights
are divided by that sum up front (:func:`normalised_axis_weights`). Accumulating in float64
then gives, for a model that returns its input, exactly the input after rounding to
float32 (tested bit for bit), and for a model that sees ``r`` pixels around each pixel the
untiled result once ``overlap >= 4 r`` (to ~1e-7).

:class:`StripBlender` keeps memory bounded for huge images: tiles arrive in grid order and
only one strip of tile rows (along the first spatial axis) is accumulated at a time;
finished rows are written to the output (numpy or zarr) as soon as no later tile touches them.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``, stepping ``tile - overlap``.

    The last tile is flush with the end. If ``size <= tile`` there is one tile at 0 (the
    caller pads it).
    """
    size, tile, overlap = int(size), int(tile), int(overlap)
    if size < 1:
        raise InputError("The image has an empty axis (size 0); there is nothing to predict.")
    if tile < 1 or not 0 <= overlap < tile:
        raise InputError(f"Tiles of {tile} pixels with an overlap of {overlap} do not work: the overlap must be at least 0 and smaller than the tile.")
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def fit_tile(size: int, tile: int, overlap: int, multiple: int) -> int:
    """The smallest tile (a multiple of ``multiple``, at most ``tile``) that needs no more tiles.

    A fixed tile wastes work on images that are not a whole number of steps long: 2048
    pixels at tile 512 and overlap 32 need 5 tiles, and 5 tiles of 448 pixels cover it as
    well as 5 of 512 with 23% fewer pixels to compute. Images smaller than a tile get one
    tile rounded up to ``multiple`` instead of a whole padded tile.
    """
    size, tile, overlap, multiple = int(size), int(tile), int(overlap), max(1, int(multiple))
    tile_starts(size, tile, overlap)  # validates
    if size <= tile:
        return min(tile, -(-size // multiple) * multiple)
    n = -(-(size - overlap) // (tile - overlap))
    fitted = -(-(size - overlap) // n) + overlap
    fitted = -(-fitted // multiple) * multiple
    return min(tile, max(fitted, overlap + 1))


def _per_axis(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise InputError(f"The {what} has {len(value)} values but the image has {n} spatial axes.")
    return value


def tile_slices(shape: Sequence[int], tile: int | Sequence[int], overlap: int | Sequence[int]) -> list[tuple[slice, ...]]:
    """Slices of every tile over the N spatial axes of ``shape``, in C order (last axis fastest).

    Tiles are clipped to the image: along an axis shorter than the tile, the tile is the whole axis.
    """
    shape = tuple(int(s) for s in shape)
    tile = _per_axis(tile, len(shape), "tile size")
    overlap = _per_axis(overlap, len(shape), "overlap")
    per_axis = [
        [slice(s, min(s + t, n)) for s in tile_starts(n, t, o)]
        for n, t, o in zip(shape, tile, overlap)
    ]
    return list(itertools.product(*per_axis))


# Weight of the outer quarter of each overlap: tiny, so the tile-edge pixels (which saw the
# least context) barely count where a neighbour covers them, but not 0, so a pixel on the
# image border that only one tile covers still gets that tile's value after normalising.
EDGE_WEIGHT = 1e-8


def blend_profile(length: int, overlap: int) -> np.ndarray:
    """1D weights of one tile of ``length`` pixels (float64), symmetric about its centre.

    Over the ``overlap`` pixels at each end: the outer quarter weighs :data:`EDGE_WEIGHT`
    (those pixels lack context on one side), the middle half ramps up as a raised cosine
    (sin^2), and the inner quarter and the tile's middle weigh 1. Where two tiles overlap by
    exactly ``overlap`` their ramps sum to 1, so the blend is a smooth cross-fade between the
    two tiles' better halves. A model whose receptive field reaches ``r`` pixels therefore
    gives the same result tiled as untiled (to ~1e-8) once ``overlap >= 4 r``.
    """
    half = length // 2
    trim = min(int(overlap) // 4, half)
    # Overlaps longer than half a tile (several tiles over each pixel) keep their trim and
    # shorten the ramp so that the two ends of the profile still fit in the tile.
    ramp_len = max(0, min(int(overlap) - 2 * trim, half - trim))
    profile = np.ones(length, dtype=np.float64)
    if trim + ramp_len > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(ramp_len, dtype=np.float64) + 0.5) / max(ramp_len, 1)) ** 2
        rising = np.concatenate([np.full(trim, EDGE_WEIGHT), ramp])
        profile[:len(rising)] = rising
        profile[length - len(rising):] = np.minimum(profile[length - len(rising):], rising[::-1])
    return profile


def blend_window(tile_shape: Sequence[int], overlap: int | Sequence[int]) -> np.ndarray:
    """The N-D blend window of a tile (float32): the outer product of :func:`blend_profile` per axis."""
    tile_shape = tuple(int(s) for s in tile_shape)
    overlap = _per_axis(overlap, len(tile_shape), "overlap")
    window = np.ones((), dtype=np.float64)
    for length, o in zip(tile_shape, overlap):
        window = np.multiply.outer(window, blend_profile(length, o))
    return window.astype(np.float32)


def normalised_axis_weights(size: int, tile: int, overlap: int) -> list[np.ndarray]:
    """Per tile along one axis: its profile divided by the sum of all profiles (float64).

    The weights of the tiles covering a pixel sum to 1 (to rounding), so a tile's N-D weight
    is the outer product of its per-axis weights and no weight sum needs accumulating.
    """
    starts = tile_starts(size, tile, overlap)
    length = min(int(tile), int(size))
    half = length // 2
    profiles = []
    for s in starts:
        profile = blend_profile(length, overlap)
        # A side on the image border is the image's edge, not a tile cut: its pixels are as
        # good as the untiled network's there, so they keep full weight.
        if s == 0:
            profile[:half] = 1.0
        if s + length == size:
            profile[length - half:] = 1.0
        profiles.append(profile)
    total = np.zeros(int(size), dtype=np.float64)
    for s, profile in zip(starts, profiles):
        total[s:s + length] += profile
    return [profile / total[s:s + length] for s, profile in zip(starts, profiles)]


def crop_with_margin(shape: Sequence[int], box: Sequence[slice], margin: int | Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Grow ``box`` (one slice per axis of ``shape``) by ``margin`` pixels, clipped to the image.

    Returns ``(padded_box, inner)``: read ``image[..., *padded_box]``, predict it, and
    ``result[..., *inner]`` is the prediction of ``box`` with real image context at its borders
    (used for "predict the current view").
    """
    shape = tuple(int(s) for s in shape)
    if len(box) != len(shape):
        raise InputError(f"The region has {len(box)} axes but the image has {len(shape)}.")
    margin = _per_axis(margin, len(shape), "margin")
    padded, inner = [], []
    for n, sl, m in zip(shape, box, margin):
        start, stop, step = sl.indices(n)
        if step != 1 or stop <= start:
            raise InputError("The region to predict is empty or strided; choose a box inside the image.")
        lo, hi = max(0, start - m), min(n, stop + m)
        padded.append(slice(lo, hi))
        inner.append(slice(start - lo, stop - lo))
    return tuple(padded), tuple(inner)


class StripBlender:
    """Blend tile outputs of one image (N spatial axes) into ``write``, one strip at a time.

    Tiles must be added in grid order (C order over the tile grid of :func:`tile_slices`).
    A strip is the tiles sharing a start on the first spatial axis; only the current strip's
    rows are held, in float64. When the next strip begins, rows no later tile reaches are
    handed to ``write(rows: slice, values: float32 (C, rows, ...))``.

    ``strips`` (indices into the strips of the whole grid, consecutive) blends only those: rows
    that only they reach come out exactly as in the whole image's blend (the weights are the
    whole grid's), the others are partial and the caller drops them.
    """

    def __init__(self, write: Callable[[slice, np.ndarray], None], n_channels: int,
                 shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int],
                 strips: range | None = None):
        self.write = write
        self.n_channels = int(n_channels)
        self.shape = tuple(int(s) for s in shape)
        self.tile = _per_axis(tile, len(self.shape), "tile size")
        self.overlap = _per_axis(overlap, len(self.shape), "overlap")
        self.starts0 = tile_starts(self.shape[0], self.tile[0], self.overlap[0])
        # Per axis: {tile start: normalised 1D weight}.
        self.weights = [
            dict(zip(tile_starts(n, t, o), normalised_axis_weights(n, t, o)))
            for n, t, o in zip(self.shape, self.tile, self.overlap)
        ]
        self.strips = strips if strips is not None else range(len(self.starts0))
        # One tile over the whole image (a current view, a small image): every normalised weight is
        # exactly 1 (a profile divided by itself), so its output is the answer as it comes.
        self._one_tile = all(len(w) == 1 for w in self.weights)
        self._strip = self.strips.start - 1  # index into starts0 of the strip being accumulated
        self._lo = 0  # first image row held in the buffer
        self._buffer: np.ndarray | None = None

    @property
    def strip_height(self) -> int:
        return min(self.tile[0], self.shape[0])

    def _begin_strip(self, index: int) -> None:
        start = self.starts0[index]
        new = np.zeros((self.n_channels, self.strip_height) + self.shape[1:], dtype=np.float64)
        if self._buffer is not None:
            # Rows before this strip's start are final: no later tile reaches them.
            done = start - self._lo
            if done > 0:
                self.write(slice(self._lo, start), self._buffer[:, :done].astype(np.float32))
            keep = self._buffer[:, done:]
            new[:, :keep.shape[1]] = keep
        self._buffer, self._lo, self._strip = new, start, index

    def add(self, tile: tuple[slice, ...], values: np.ndarray) -> None:
        """Add one tile's output ``values`` (C, *tile extent) at image position ``tile``."""
        start0 = tile[0].start
        index = self.starts0.index(start0)
        if index < self._strip:
            raise ValueError("tiles must be added in grid order")
        if self._one_tile:
            self.write(slice(0, self.shape[0]), np.asarray(values, dtype=np.float32))
            self._strip = self.strips.stop - 1  # written: close() has nothing left to do
            return
        while self._strip < index:
            self._begin_strip(self._strip + 1)
        weight = np.ones((), dtype=np.float64)
        for axis, sl in enumerate(tile):
            weight = np.multiply.outer(weight, self.weights[axis][sl.start])
        local = (slice(None), slice(start0 - self._lo, tile[0].stop - self._lo)) + tuple(tile[1:])
        self._buffer[local] += values * weight

    def close(self) -> None:
        """Write every row still held (call once, after the last tile)."""
        while self._strip < self.strips.stop - 1:
            self._begin_strip(self._strip + 1)
        if self._buffer is not None:
            self.write(slice(self._lo, self._lo + self.strip_height), self._buffer.astype(np.float32))
            self._buffer = None


def n_tiles(shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int]) -> int:
    """How many tiles :func:`tile_slices` makes for ``shape``."""
    return math.prod(len(tile_starts(n, t, o)) for n, t, o in zip(shape, tile, overlap))


def pad_mode(size: int) -> str:
    # Reflection needs at least two pixels; a single row/column can only be repeated.
    return "reflect" if size > 1 else "edge"


def pad_to(block: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Pad the spatial axes (a tile cut short by the image's end) of a (C, *spatial) block at their ends up to ``shape``."""
    if tuple(block.shape[1:]) == tuple(shape):
        return block
    for axis, (have, want) in enumerate(zip(block.shape[1:], shape), start=1):
        if want > have:
            widths = [(0, 0)] * block.ndim
            widths[axis] = (0, want - have)
            block = np.pad(block, widths, mode=pad_mode(have))
    return block
