"""Which part of an image a run covers: the whole array, or the current view.

A :class:`Region` is a box in the spatial axes of the layer's data (Z, Y, X or Y, X).
"Current view" is the visible box of the current plane, read from the napari layer's
``corner_pixels`` (data coordinates of the visible corners) and the current dims point,
but computed here from plain numbers so the core never needs napari.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Region:
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @classmethod
    def whole(cls, spatial_shape: tuple[int, ...]) -> "Region":
        return cls(tuple(0 for _ in spatial_shape), tuple(int(s) for s in spatial_shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def grow(self, margin: tuple[int, ...], spatial_shape: tuple[int, ...]) -> "Region":
        """The region plus ``margin`` on each side, clipped to the image."""
        start = tuple(max(0, a - m) for a, m in zip(self.start, margin))
        stop = tuple(min(s, b + m) for b, m, s in zip(self.stop, margin, spatial_shape))
        return Region(start, stop)

    def relative_to(self, outer: "Region") -> tuple[slice, ...]:
        """Slices that cut this region out of an array covering ``outer``."""
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, outer.start))


def view_region(corner_pixels: np.ndarray, current_point: tuple[float, ...],
                spatial_shape: tuple[int, ...], displayed_axes: tuple[int, ...],
                z_extent: int = 1) -> Region:
    """The visible box of the current plane, in the spatial axes of the data.

    ``corner_pixels``: (2, ndim) data coordinates of the visible corners (napari's
    ``layer.corner_pixels``, spatial axes only). ``current_point``: the current position
    in data coordinates (spatial axes). Axes that are not displayed take the current
    plane; with ``z_extent`` > 1 (a 3D model) a slab of that many planes around it.
    """
    corners = np.asarray(corner_pixels, dtype=float)
    start, stop = [], []
    for axis, size in enumerate(spatial_shape):
        if axis in displayed_axes:
            # napari pixel i spans [i - 0.5, i + 0.5): the pixels touching the box.
            lo = max(0, int(np.floor(corners[0, axis] + 0.5)))
            hi = min(size, int(np.floor(corners[1, axis] + 0.5)) + 1)
        else:
            plane = int(np.clip(round(current_point[axis]), 0, size - 1))
            half = z_extent // 2
            lo = max(0, min(plane - half, size - z_extent))
            hi = min(size, lo + z_extent)
        if hi <= lo:
            raise InputError("The layer is not in view: pan or zoom to it, or run on the whole image.")
        start.append(lo)
        stop.append(hi)
    return Region(tuple(start), tuple(stop))
