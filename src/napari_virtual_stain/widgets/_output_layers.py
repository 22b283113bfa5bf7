"""Publish LayerDataTuples as overlay layers: created once, then updated in place."""

from __future__ import annotations

import numpy as np
from napari.layers import Image


def _ndim(data, multiscale: bool) -> int:
    return len((data[0] if multiscale else data).shape)


def publish(viewer, tuples: list[tuple]) -> list:
    """Add each tuple as a layer, or update the layer of that name if it is already there.

    An existing layer keeps the user's colormap, blending and contrast; its data and
    position are replaced. A layer of another kind or dimensionality is replaced, and so is
    one that is (or is not) multiscale when the new data is not (or is): napari fixes that
    when a layer is made.
    """
    layers = []
    for data, kwargs, kind in tuples:
        name = kwargs["name"]
        multiscale = bool(kwargs.get("multiscale", False))
        existing = viewer.layers[name] if name in viewer.layers else None
        if (existing is not None and isinstance(existing, Image) and kind == "image"
                and existing.ndim == (ndim := _ndim(data, multiscale))
                and bool(existing.multiscale) == multiscale
                and ("rgb" not in kwargs or bool(existing.rgb) == bool(kwargs["rgb"]))):
            existing.data = data
            existing.scale = kwargs["scale"]
            existing.translate = kwargs["translate"]
            existing.affine = kwargs.get("affine", np.eye(ndim + 1))
            existing.metadata.update(kwargs.get("metadata", {}))
            layers.append(existing)
            continue
        if existing is not None:
            viewer.layers.remove(existing)
        add = getattr(viewer, f"add_{kind}")
        layers.append(add(data, **kwargs))
    return layers
