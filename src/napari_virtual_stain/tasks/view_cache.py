"""Pixels already predicted for an image, reused when the current view moves.

A current-view prediction equals the whole-image prediction on the view's pixels (real
context around the view, whole-image normalisation statistics), so what was predicted for
one view is still right for the next: after a pan only the newly visible part has to go
through the network. :class:`ViewCache` keeps the predicted pixels of one image and says
which boxes of a new view are still missing: a band of whole rows and one box for the rest
(a pan in any direction, diagonal ones included, is at most two boxes).

The cache belongs to one (image, model, settings): the caller drops it when any of them changes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .region import Region

# Images larger than this (pixels x channels) are not cached: the canvas would take more than
# ~1 GB; such images are for whole-image runs written to disk anyway.
MAX_CACHED_VALUES = 1 << 28


class ViewCache:
    def __init__(self, n_channels: int, spatial_shape: Sequence[int]):
        self.shape = tuple(int(s) for s in spatial_shape)
        self.n_channels = int(n_channels)
        self.values: np.ndarray | None = None  # (C, *spatial) float32, allocated on first store
        self.known = np.zeros(self.shape, dtype=bool)

    @staticmethod
    def fits(n_channels: int, spatial_shape: Sequence[int]) -> bool:
        return n_channels * int(np.prod(spatial_shape, dtype=np.int64)) <= MAX_CACHED_VALUES

    def missing(self, region: Region) -> list[Region]:
        """Boxes inside ``region`` that cover every pixel not predicted yet (none: all known)."""
        unknown = ~self.known[region.slices]
        if not unknown.any():
            return []
        if unknown.ndim < 2:
            return [_bounding_box(unknown, region)]
        # Rows (along the second-to-last axis) unknown everywhere form one band; the rest is one box.
        lead = tuple(range(unknown.ndim - 2))
        rows_unknown = unknown.all(axis=lead + (unknown.ndim - 1,)) if lead else unknown.all(axis=-1)
        boxes = []
        rest = unknown.copy()
        if rows_unknown.any():
            rows = np.flatnonzero(rows_unknown)
            band = np.zeros(unknown.shape[-2], dtype=bool)
            band[rows.min():rows.max() + 1] = True
            if rows_unknown[rows.min():rows.max() + 1].all():  # one contiguous band
                start = list(region.start)
                stop = list(region.stop)
                start[-2], stop[-2] = region.start[-2] + rows.min(), region.start[-2] + rows.max() + 1
                boxes.append(Region(tuple(start), tuple(stop)))
                rest[..., band, :] = False
        if rest.any():
            boxes.append(_bounding_box(rest, region))
        return boxes

    def store(self, region: Region, values: np.ndarray) -> None:
        if self.values is None:
            self.values = np.zeros((self.n_channels,) + self.shape, dtype=np.float32)
        self.values[(slice(None),) + region.slices] = values
        self.known[region.slices] = True

    def read(self, region: Region) -> np.ndarray:
        """The predicted values of ``region`` (all of it must be known)."""
        if self.values is None or not self.known[region.slices].all():
            raise ValueError("part of the region has not been predicted")
        return np.ascontiguousarray(self.values[(slice(None),) + region.slices])

    @property
    def known_fraction(self) -> float:
        return float(self.known.mean())


def nearest_first(parts: Sequence[Region], view: Region, block: int) -> list[Region]:
    """``parts`` cut into blocks of at most ``block`` pixels along Y and X, nearest ``view``'s centre first.

    What a progressive current view fills first: the user looks at the middle of the view,
    so the blocks there come back first and the edges last.
    """
    if block < 1:
        raise ValueError("block must be at least one pixel")
    centre = np.array([(a + b) / 2 for a, b in zip(view.start[-2:], view.stop[-2:])])
    blocks = []
    for part in parts:
        ys = range(part.start[-2], part.stop[-2], block)
        xs = range(part.start[-1], part.stop[-1], block)
        for y in ys:
            for x in xs:
                start = part.start[:-2] + (y, x)
                stop = part.stop[:-2] + (min(y + block, part.stop[-2]), min(x + block, part.stop[-1]))
                blocks.append(Region(start, stop))

    def distance(box: Region) -> float:
        middle = np.array([(a + b) / 2 for a, b in zip(box.start[-2:], box.stop[-2:])])
        return float(np.hypot(*(middle - centre)))

    return sorted(blocks, key=distance)


def _bounding_box(mask: np.ndarray, region: Region) -> Region:
    where = np.nonzero(mask)
    start = tuple(int(o + w.min()) for o, w in zip(region.start, where))
    stop = tuple(int(o + w.max() + 1) for o, w in zip(region.start, where))
    return Region(start, stop)


class LevelViewCaches:
    """One :class:`ViewCache` per pyramid level of an image (level 0 for a plain image).

    A view predicted at one level is reused when the user pans or zooms back to that level;
    levels never mix (their pixels are different sizes). Levels too big to cache give None.
    """

    def __init__(self, n_channels: int):
        self.n_channels = int(n_channels)
        self._caches: dict[int, ViewCache | None] = {}

    def for_level(self, level: int, spatial_shape: Sequence[int]) -> ViewCache | None:
        level = int(level)
        if level not in self._caches:
            fits = ViewCache.fits(self.n_channels, spatial_shape)
            self._caches[level] = ViewCache(self.n_channels, spatial_shape) if fits else None
        cache = self._caches[level]
        if cache is not None and cache.shape != tuple(int(s) for s in spatial_shape):
            raise ValueError(f"level {level} was cached with another shape")
        return cache
