"""What the user sees: the visible box of a layer, in its data coordinates.

Computed from the camera (centre, zoom) and the canvas size rather than from
``layer.corner_pixels``, which is only refreshed when the canvas draws: a run right
after a programmatic pan must use the new view.
"""

from __future__ import annotations

import itertools

import numpy as np


def canvas_size(viewer) -> tuple[int, int]:
    """(height, width) of the canvas in screen pixels."""
    try:
        return tuple(int(v) for v in viewer.window._qt_viewer.canvas.size)
    except AttributeError:  # headless viewer model: assume a typical canvas
        return (600, 800)


def visible_data_corners(viewer, layer) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Corners (2, layer.ndim) of the visible box in layer data coordinates, the current
    point in data coordinates, and the layer axes that are displayed."""
    height, width = canvas_size(viewer)
    zoom = float(viewer.camera.zoom)
    centre = np.asarray(viewer.camera.center[-2:], dtype=float)
    half = np.array([height, width], dtype=float) / (2 * zoom)
    point = np.asarray(viewer.dims.point, dtype=float)
    displayed_world = list(viewer.dims.displayed[-2:])
    corners_data = []
    for dy, dx in itertools.product((-1, 1), repeat=2):
        world = point.copy()
        world[displayed_world] = centre + np.array([dy, dx]) * half
        corners_data.append(layer.world_to_data(world[-layer.ndim:] if len(world) > layer.ndim else world))
    corners_data = np.asarray(corners_data)
    box = np.stack([corners_data.min(axis=0), corners_data.max(axis=0)])
    current = np.asarray(layer.world_to_data(point[-layer.ndim:] if len(point) > layer.ndim else point))
    displayed_layer_axes = tuple(range(layer.ndim))[-2:]
    return box, current, displayed_layer_axes
