"""One place that turns a napari layer and the camera into a region, and puts results back.

Every dock asks the same two questions:

- *What does the user see?* :func:`visible_region`: the visible box of the current plane
  of a layer, in the core's spatial axes. Computed from the camera (centre, zoom) and the
  canvas size rather than from ``layer.corner_pixels``, which is only refreshed when the
  canvas draws (a run right after a programmatic pan must use the new view). The screen
  box is carried into the layer's data coordinates with the layer's own transform
  (scale, translate, rotate, shear, affine), and the displayed axes are read from
  ``viewer.dims`` (any dims order: a layer shown as Z-X gets a Z-X box).
- *Where does a result go?* :func:`placement`: the layer arguments that put an array
  covering ``region`` of the layer's spatial axes exactly on those pixels, keeping the
  layer's rotation, shear and affine as well as its scale and translate.
- *Which pyramid level is on screen?* :func:`displayed_level`: for a multiscale layer, the
  level napari shows for the current camera (its own rule, applied to the camera rather
  than to the last draw). A layer's data coordinates are those of its full resolution;
  ``downsample`` (a level's factor per spatial axis) carries boxes into a level's pixels and
  a level's pixels back: napari draws level pixel ``i`` centred on full-resolution
  coordinate ``i * factor``, and so do the results placed here.
- *At which levels is a result shown?* :class:`LevelView` ``ratios``: a result of a
  multiscale input becomes a pyramid over the input's coarser levels
  (``tasks.output_pyramid``); a view's box is grown to those levels' blocks so each output
  level lies exactly on the input's (``LevelView.place`` and ``LevelView.pyramids``).

Layer axes here are napari's (an RGB layer's colour axis is not one); "spatial axes" are
the layer axes the core works on, in order (e.g. (1, 2) for a channels-first C, Y, X layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..tasks.arrays import layout_for
from ..tasks.output_pyramid import MAX_VIEW_RATIO, align_region, alignment, as_pyramids, level_ratios
from ..tasks.pyramid import choose_level
from ..tasks.region import Region, view_region


def canvas_size(viewer) -> tuple[int, int]:
    """(height, width) of the canvas in screen pixels."""
    try:
        return tuple(int(v) for v in viewer.window._qt_viewer.canvas.size)
    except AttributeError:  # headless viewer model: assume a typical canvas
        return (600, 800)


def spatial_axes(layer, n_spatial: int, channel_axis: int | None = None) -> tuple[int, ...]:
    """The last ``n_spatial`` layer axes, skipping ``channel_axis`` (e.g. 0 for C, Y, X)."""
    axes = [a for a in range(layer.ndim) if a != channel_axis]
    if len(axes) < n_spatial:
        raise InputError(f"The layer '{layer.name}' has {layer.ndim} axes; {n_spatial} spatial axes are needed.")
    return tuple(axes[-n_spatial:])


def displayed_layer_axes(viewer, layer) -> tuple[int, ...]:
    """The layer axes on screen (rows, columns), from the viewer's dims order."""
    offset = viewer.dims.ndim - layer.ndim  # napari aligns a layer with the last world axes
    return tuple(w - offset for w in viewer.dims.displayed[-2:] if w - offset >= 0)


def visible_data_box(viewer, layer) -> tuple[np.ndarray, np.ndarray]:
    """Corners (2, layer.ndim) of the visible box and the current point, in layer data coordinates."""
    if getattr(getattr(viewer, "grid", None), "enabled", False):
        raise InputError("The current view is not defined in grid mode (each layer sits in its own cell): "
                         "turn grid mode off or run on the whole image.")
    height, width = canvas_size(viewer)
    zoom = float(viewer.camera.zoom)
    centre = np.asarray(viewer.camera.center[-2:], dtype=float)
    half = np.array([height, width], dtype=float) / (2 * zoom)
    point = np.asarray(viewer.dims.point, dtype=float)
    shown = list(viewer.dims.displayed[-2:])
    offset = len(point) - layer.ndim
    corners = []
    for dy, dx in itertools.product((-1, 1), repeat=2):
        world = point.copy()
        world[shown] = centre + np.array([dy, dx]) * half
        corners.append(layer.world_to_data(world[offset:]))
    corners = np.asarray(corners, dtype=float)
    current = np.asarray(layer.world_to_data(point[offset:]), dtype=float)
    return np.stack([corners.min(axis=0), corners.max(axis=0)]), current


def layer_levels(layer) -> list:
    """The arrays of a layer: a multiscale layer's levels (full resolution first), or its one array."""
    return list(layer.data) if getattr(layer, "multiscale", False) else [layer.data]


def level_downsample(layer, axes: Sequence[int]) -> np.ndarray:
    """(levels, len(axes)) factors of each level over the layer ``axes`` (ones for a plain layer)."""
    if not getattr(layer, "multiscale", False):
        return np.ones((1, len(axes)))
    return np.asarray(layer.downsample_factors, dtype=float)[:, list(axes)]


def displayed_level(viewer, layer) -> int:
    """The pyramid level napari displays for the current camera (0 for a plain layer).

    napari picks the coarsest level that still has a data pixel per screen pixel of the
    visible box (``compute_multiscale_level``) when the canvas draws; computing it here from
    the camera gives the level a run right after a programmatic zoom will be shown at.
    A locked level is that level; a 3D view shows the coarsest.
    """
    if not getattr(layer, "multiscale", False):
        return 0
    if layer.locked_data_level is not None:
        return int(layer.locked_data_level)
    if viewer.dims.ndisplay == 3:
        return len(layer.data) - 1
    from napari.layers.utils.layer_utils import compute_multiscale_level

    box, _ = visible_data_box(viewer, layer)
    shown = list(displayed_layer_axes(viewer, layer))
    requested = np.ceil(box[1, shown]) - np.floor(box[0, shown])
    threshold = np.asarray(canvas_size(viewer), dtype=float)[-len(shown):]
    factors = np.asarray(layer.downsample_factors, dtype=float)[:, shown]
    return int(compute_multiscale_level(requested, threshold, factors))


def layer_pixel_size_um(layer) -> float | None:
    """The in-plane (X) pixel size of a layer's full resolution in micrometres, when its reader knew it."""
    sizes = (getattr(layer, "metadata", None) or {}).get("pixel_size_um")
    if not sizes:
        return None
    value = sizes[-1] if isinstance(sizes, (list, tuple)) else sizes
    return float(value) if value else None


def visible_region(viewer, layer, axes: Sequence[int], spatial_shape: Sequence[int], z_extent: int = 1,
                   downsample: Sequence[float] | None = None) -> Region:
    """The visible box of the current plane over the layer ``axes`` (the core's spatial axes).

    With ``downsample`` (a pyramid level's factor per axis in ``axes``) the box is in that
    level's pixels and ``spatial_shape`` is the level's.
    """
    box, current = visible_data_box(viewer, layer)
    if downsample is not None:  # full-resolution coordinates -> the level's (pixel i sits at i * factor)
        factors = np.ones(layer.ndim)
        factors[list(axes)] = np.asarray(downsample, dtype=float)
        box, current = box / factors, current / factors
    axes = list(axes)
    shown = [axes.index(a) for a in displayed_layer_axes(viewer, layer) if a in axes]
    return view_region(box[:, axes], tuple(current[axes]), tuple(int(s) for s in spatial_shape), tuple(shown),
                       z_extent=z_extent)


def _data_to_world_affine(layer, axes: Sequence[int]) -> np.ndarray:
    """The (n+1)x(n+1) affine matrix of the layer's data -> world map over ``axes``.

    Read off ``layer.data_to_world`` at the origin and the unit vectors (exact: the map is
    affine), so every part of the layer's transform is included, whatever napari stores.
    """
    n = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(n)), dtype=float)[-n:]
    columns = [np.asarray(layer.data_to_world(np.eye(n)[i]), dtype=float)[-n:] - origin for i in range(n)]
    linear = np.stack(columns, axis=1)
    axes = list(axes)
    matrix = np.eye(len(axes) + 1)
    matrix[:-1, :-1] = linear[np.ix_(axes, axes)]
    matrix[:-1, -1] = origin[axes]
    return matrix


def placement(layer, axes: Sequence[int], start: Sequence[int], downsample: Sequence[float] | None = None) -> dict:
    """Layer arguments (``scale`` and ``translate``, plus ``affine`` when the layer is rotated,
    sheared or has an affine) that place an array covering the layer ``axes`` from ``start``.

    With ``downsample``, ``start`` and the array are in a pyramid level's pixels: the output's
    scale is the layer's times the level's factors, so it overlays the level napari draws.
    """
    matrix = _data_to_world_affine(layer, axes)
    linear = matrix[:-1, :-1]
    if downsample is not None:
        linear = linear @ np.diag(np.asarray(downsample, dtype=float))
    translate = matrix[:-1, -1] + linear @ np.asarray(start, dtype=float)
    scale = np.diag(linear).copy()
    if np.allclose(linear, np.diag(scale)):  # only scale and translate: keep them readable
        return {"scale": tuple(float(s) for s in scale), "translate": tuple(float(t) for t in translate)}
    affine = np.eye(len(axes) + 1)
    affine[:-1, :-1], affine[:-1, -1] = linear, translate
    return {"scale": (1.0,) * len(axes), "translate": (0.0,) * len(axes), "affine": affine}


@dataclass(frozen=True)
class LevelView:
    """What a run on a (possibly multiscale) layer covers: a level, and a box of it."""

    level: int  # 0 for a plain layer
    downsample: tuple[float, ...]  # the level's factor per spatial axis
    region: Region | None  # in the level's pixels; None: all of it
    note: str | None = None  # a sentence when the pyramid has no level at the model's scale
    # The output pyramid: the factors of the input's coarser levels over this one (first all
    # ones; tasks.output_pyramid). A view's region starts and ends on their blocks.
    ratios: tuple[tuple[int, ...], ...] = ((1, 1),)

    def place(self, layer, axes: Sequence[int], start: Sequence[int]) -> dict:
        """:func:`placement` of a result of this run starting at ``start`` (of this level)."""
        return placement(layer, axes, start, self.downsample if getattr(layer, "multiscale", False) else None)

    def pyramids(self, layer, tuples: list[tuple], start: Sequence[int]) -> list[tuple]:
        """The result's image layers as pyramids over the input's coarser levels (a multiscale input only)."""
        if not getattr(layer, "multiscale", False):
            return list(tuples)
        return as_pyramids(tuples, self.ratios, start)


def level_view(viewer, layer, card, whole: bool = False, level: int | None = None) -> LevelView:
    """The level a run of ``card`` predicts at and its visible box (``whole``: all of that level).

    The current view uses the displayed level or a coarser one nearer the model's pixel size;
    a whole-image run ``level``, or without one the level nearest the model's pixel size (the
    full resolution without one). In a 3D view everything is "visible": the whole level.
    """
    levels = layer_levels(layer)
    layout = layout_for(levels[0], card, layer.rgb, layer.name)
    axes = spatial_axes(layer, layout.spatial_ndim, None if layout.rgb else layout.channel_axis)
    z_extent = card.tile[0] if card.spatial_dims == 3 else 1
    return level_view_over(viewer, layer, axes, lambda data: layout.spatial_shape(tuple(data.shape)), whole=whole,
                           level=level, model_pixel_size_um=card.pixel_size_um, z_extent=z_extent)


def level_view_over(viewer, layer, axes: Sequence[int], spatial_shape_of, *, whole: bool = False,
                    level: int | None = None, model_pixel_size_um: float | None = None,
                    z_extent: int = 1) -> LevelView:
    """:func:`level_view` for a run over the layer ``axes`` (no model card needed: MAXIM, DeepLIIF).

    ``spatial_shape_of(level_array)``: the shape of a level over ``axes``. A current view's box
    is grown to the blocks of the output pyramid's levels (tasks.output_pyramid.align_region).
    """
    levels = layer_levels(layer)
    downsample = level_downsample(layer, axes)
    whole = whole or viewer.dims.ndisplay == 3
    if whole and level is not None:
        if not 0 <= int(level) < len(levels):
            raise InputError(f"The layer '{layer.name}' has {len(levels)} pyramid level(s); level {level} does not "
                             "exist.")
        chosen, note = int(level), None
    else:
        choice = choose_level(downsample, 0 if whole else displayed_level(viewer, layer), layer_pixel_size_um(layer),
                              model_pixel_size_um)
        chosen, note = choice.level, choice.note
    factors = tuple(float(f) for f in downsample[chosen])
    ratios = level_ratios(downsample, chosen, None if whole else MAX_VIEW_RATIO)
    if whole:
        return LevelView(chosen, factors, None, note, ratios)
    spatial_shape = spatial_shape_of(levels[chosen])
    region = visible_region(viewer, layer, axes, spatial_shape, z_extent=z_extent, downsample=factors)
    region = align_region(region, alignment(ratios), spatial_shape)
    return LevelView(chosen, factors, region, note, ratios)
