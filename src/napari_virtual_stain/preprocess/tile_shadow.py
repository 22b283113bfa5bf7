"""Remove the shadow that repeats in every camera tile of a stitched image.

Paper 000 (section 2.1): the photographs are mosaics of 304x304 camera tiles that all
carry the same shadow. The authors averaged several near-empty tiles into an "average
artifact", laid that artifact on a grid matching the whole image and subtracted it.

This module does the same, per channel, on ``(Y, X)`` or ``(..., Y, X)`` arrays (every
leading index, channel or z-plane, gets its own artifact; an RGB image is given as
``(3, Y, X)``). Choices made here, all documented on :func:`correct_tile_shadow`:

* The grid starts at the top-left pixel. When the tile size does not divide the image,
  the last row/column of tiles is partial: those tiles are left out of the estimate and
  corrected with the matching top-left part of the artifact (``strict=True`` refuses
  such images instead).
* "Emptiest" tiles are chosen once for all channels, by a criterion (``"flat"``,
  ``"dark"``, ``"bright"``), or given as explicit (row, column) grid indices.
* By default only the shadow's pattern is removed (the artifact minus its mean), which
  keeps the background level: that suits bright-field and dark-field images alike.
  ``remove_background=True`` subtracts the whole artifact, as the paper did, which also
  takes the empty tiles' level down to zero (dark-background images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, check_cancel
from ._common import as_planes, checked_float_image, clip_to_range, valid_range

CRITERIA = ("flat", "dark", "bright")
STATISTICS = ("mean", "median")


@dataclass
class TileShadowResult:
    """``corrected``: float32, the input's shape. ``artifact``: float32 ``(..., ty, tx)``,
    the average artifact per channel (with its level). ``tiles``: the (row, column) grid
    indices that were averaged."""

    corrected: np.ndarray
    artifact: np.ndarray
    tiles: list[tuple[int, int]]


def tile_size_pair(tile) -> tuple[int, int]:
    """``304`` or ``(304, 304)`` -> ``(304, 304)``; refuses sizes below 2 pixels."""
    pair = (tile, tile) if np.isscalar(tile) else tuple(tile)
    if len(pair) != 2 or any(int(t) != t or t < 2 for t in pair):
        raise InputError(f"The tile size must be one or two whole numbers of at least 2 pixels, not {tile!r}.")
    return int(pair[0]), int(pair[1])


def full_tile_grid(shape_yx, tile, *, strict: bool = False) -> tuple[int, int]:
    """Number of complete tiles ``(rows, columns)`` that fit in an image of ``shape_yx``.

    Raises InputError when the tile is larger than the image, or (``strict``) when the
    tile size does not divide the image exactly.
    """
    ty, tx = tile_size_pair(tile)
    height, width = shape_yx
    if ty > height or tx > width:
        raise InputError(
            f"The tile size {ty}x{tx} is larger than the image ({height}x{width}): "
            "give the size of one camera tile of the mosaic."
        )
    if strict and (height % ty or width % tx):
        raise InputError(
            f"The tile size {ty}x{tx} does not divide the image ({height}x{width}): "
            f"{height % ty} row(s) and {width % tx} column(s) are left over."
        )
    return height // ty, width // tx


def tile_emptiness(image, tile, criterion: str = "flat") -> np.ndarray:
    """A score for every complete tile, shape ``(rows, columns)``: lower = emptier.

    * ``"flat"``: the tile's standard deviation. An empty tile holds only the shadow,
      which is the same in every tile; tissue or cells add variation.
    * ``"dark"``: the tile's mean (empty = dark: fluorescence, dark-field).
    * ``"bright"``: minus the tile's mean (empty = bright: bright-field).

    Each channel's scores are divided by that channel's spread before they are summed,
    so a bright channel does not decide alone.
    """
    return _emptiness(as_planes(checked_float_image(image)), tile, criterion)


def pick_empty_tiles(
    image, tile, *, n_empty: int | None = None, fraction: float = 0.1, criterion: str = "flat"
) -> list[tuple[int, int]]:
    """The (row, column) indices of the emptiest complete tiles, emptiest first.

    ``n_empty`` tiles, or when it is None ``fraction`` of the complete tiles (at least 1).
    At least 2 complete tiles are needed: with one, the "artifact" would be the image.
    """
    scores = tile_emptiness(image, tile, criterion)
    return _emptiest(scores, n_empty, fraction)


def estimate_artifact(
    image, tile, tiles: Sequence[tuple[int, int]], *, statistic: str = "mean"
) -> np.ndarray:
    """Average (``"mean"``, as in paper 000, or ``"median"``) the given tiles, per channel.

    Returns float32 of shape ``image.shape[:-2] + (ty, tx)``.
    """
    values = checked_float_image(image)
    artifact = _average_tiles(as_planes(values), tile, tiles, statistic)
    return artifact.reshape(values.shape[:-2] + artifact.shape[-2:])


def subtract_artifact(image, artifact, *, remove_background: bool = False) -> np.ndarray:
    """Subtract ``artifact`` tiled from the top-left corner; float32 result, clipped.

    Partial tiles at the right/bottom edge get the artifact's top-left part. Without
    ``remove_background`` the artifact's mean (per channel) is added back, so only the
    shadow pattern is removed. The result is clipped to the input's valid range (see
    ``_common.valid_range``): unsigned and non-negative images stay non-negative.
    """
    source = np.asarray(image)
    values = checked_float_image(source)
    artifact = np.asarray(artifact, dtype=np.float32)
    if artifact.ndim != values.ndim or artifact.shape[:-2] != values.shape[:-2]:
        raise InputError(
            f"The artifact (shape {artifact.shape}) does not match the image's channels (shape {values.shape})."
        )
    _subtract_in_place(values, artifact, remove_background)
    return clip_to_range(values, *valid_range(source.dtype, float(source.min())))


def correct_tile_shadow(
    image,
    tile,
    *,
    tiles: Sequence[tuple[int, int]] | None = None,
    n_empty: int | None = None,
    fraction: float = 0.1,
    criterion: str = "flat",
    statistic: str = "mean",
    remove_background: bool = False,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> TileShadowResult:
    """Estimate the repeated tile shadow and subtract it on the tile grid (paper 000).

    ``image``: ``(Y, X)`` or ``(C, Y, X)`` (any leading axes; RGB as ``(3, Y, X)``).
    ``tile``: the camera tile size in pixels, e.g. 304 or (304, 304).
    ``tiles``: (row, column) grid indices of tiles known to be empty; when None the
    emptiest are picked with ``n_empty``/``fraction``/``criterion`` (see
    :func:`pick_empty_tiles`). ``strict``: refuse a tile size that does not divide the
    image instead of correcting the partial edge tiles with a cropped artifact.
    Returns float32 arrays (use ``cast_like`` to go back to the input's dtype); the
    input is not modified.
    """
    source = np.asarray(image)
    values = checked_float_image(source)
    full_tile_grid(values.shape[-2:], tile, strict=strict)
    planes = as_planes(values)  # a view: correcting it corrects ``values``
    total = 3
    check_cancel(cancel)
    if tiles is None:
        tiles = _emptiest(_emptiness(planes, tile, criterion), n_empty, fraction)
    _report(progress, 1, total)
    check_cancel(cancel)
    artifact = _average_tiles(planes, tile, tiles, statistic)
    _report(progress, 2, total)
    check_cancel(cancel)
    _subtract_in_place(planes, artifact, remove_background)
    clip_to_range(values, *valid_range(source.dtype, float(source.min())))
    _report(progress, 3, total)
    return TileShadowResult(
        corrected=values,
        artifact=artifact.reshape(values.shape[:-2] + artifact.shape[-2:]),
        tiles=[(int(t[0]), int(t[1])) for t in tiles],
    )


def _emptiness(planes: np.ndarray, tile, criterion: str) -> np.ndarray:
    if criterion not in CRITERIA:
        raise InputError(f"The emptiness criterion must be one of {', '.join(CRITERIA)}, not {criterion!r}.")
    tiles = _tile_view(planes, tile)  # (P, rows, cols, ty, tx)
    if criterion == "flat":
        per_channel = tiles.std(axis=(-2, -1))
    else:
        per_channel = tiles.mean(axis=(-2, -1)) * (-1.0 if criterion == "bright" else 1.0)
    spread = planes.std(axis=(-2, -1))
    spread[spread == 0] = 1.0  # a constant channel adds the same score to every tile
    return (per_channel / spread[:, None, None]).sum(axis=0)


def _emptiest(scores: np.ndarray, n_empty: int | None, fraction: float) -> list[tuple[int, int]]:
    n_tiles = scores.size
    if n_tiles < 2:
        raise InputError(
            f"The image holds only {n_tiles} complete tile of this size: at least 2 are needed "
            "to tell the shadow from the content."
        )
    if n_empty is None:
        if not 0 < fraction <= 1:
            raise InputError(f"The fraction of tiles to average must be in (0, 1], not {fraction:g}.")
        n_empty = max(1, int(round(fraction * n_tiles)))
    if not 1 <= n_empty <= n_tiles:
        raise InputError(
            f"Cannot average {n_empty} tile(s): the image holds {n_tiles} complete tiles of this size."
        )
    order = np.argsort(scores, axis=None, kind="stable")[:n_empty]
    rows, cols = np.unravel_index(order, scores.shape)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def _average_tiles(planes: np.ndarray, tile, tiles, statistic: str) -> np.ndarray:
    """``(P, Y, X)`` -> ``(P, ty, tx)`` float32: the mean or median of the given tiles."""
    if statistic not in STATISTICS:
        raise InputError(f"The statistic must be 'mean' or 'median', not {statistic!r}.")
    view = _tile_view(planes, tile)
    rows, cols = _checked_tile_indices(tiles, view.shape[1:3])
    picked = view[:, rows, cols]  # (P, n, ty, tx)
    reduce = np.mean if statistic == "mean" else np.median
    return reduce(picked, axis=1).astype(np.float32)


def _subtract_in_place(values: np.ndarray, artifact: np.ndarray, remove_background: bool) -> None:
    """``values -= artifact`` laid on the grid from the top-left corner (cropped at the edges)."""
    ty, tx = artifact.shape[-2:]
    height, width = values.shape[-2:]
    reps = (1,) * (values.ndim - 2) + (-(-height // ty), -(-width // tx))
    grid = np.tile(artifact, reps)[..., :height, :width]
    if not remove_background:
        grid = grid - artifact.mean(axis=(-2, -1), keepdims=True)
    values -= grid


def _tile_view(planes: np.ndarray, tile) -> np.ndarray:
    """``(P, Y, X)`` -> ``(P, rows, cols, ty, tx)`` over the complete tiles only (a view)."""
    ty, tx = tile_size_pair(tile)
    rows, cols = full_tile_grid(planes.shape[-2:], (ty, tx))
    cropped = planes[:, : rows * ty, : cols * tx]
    return cropped.reshape(planes.shape[0], rows, ty, cols, tx).transpose(0, 1, 3, 2, 4)


def _checked_tile_indices(tiles, grid_shape) -> tuple[np.ndarray, np.ndarray]:
    pairs = [tuple(t) for t in tiles]
    if not pairs:
        raise InputError("No tiles were given to estimate the shadow from: pick at least one empty tile.")
    if any(len(p) != 2 for p in pairs):
        raise InputError("Tiles are given as (row, column) grid indices.")
    rows, cols = grid_shape
    outside = [p for p in pairs if not (0 <= p[0] < rows and 0 <= p[1] < cols)]
    if outside:
        raise InputError(
            f"Tile {outside[0]} is not a complete tile of the grid ({rows} rows x {cols} columns, "
            "counted from 0 at the top left)."
        )
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _report(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
