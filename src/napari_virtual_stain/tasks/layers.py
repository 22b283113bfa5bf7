"""Core results -> napari LayerDataTuples (plain tuples: no napari import needed).

Outputs are overlay layers aligned with the input: their placement (the region's offset
carried through the input layer's transform, ``widgets.geometry.placement``) puts a result
computed for the current view exactly on the pixels it was computed from.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

SEPARATOR = " · "
_PALETTE = ["green", "magenta", "cyan", "yellow", "red", "blue", "orange", "bop purple"]
_BY_NAME = {
    "nucle": "cyan", "dapi": "blue", "hoechst": "blue", "histone": "blue",
    "membrane": "magenta", "actin": "red", "tubulin": "green", "mito": "yellow",
    "lap2": "green", "ki67": "red", "marker": "red", "hematox": "bop blue",
}


def output_layer_name(input_name: str, channel: str) -> str:
    return f"{input_name}{SEPARATOR}{channel}"


def colormap_for(channel: str, index: int) -> str:
    lowered = channel.lower()
    for key, cmap in _BY_NAME.items():
        if key in lowered:
            return cmap
    return _PALETTE[index % len(_PALETTE)]


def overlay_tuples(data: np.ndarray, channels: Sequence[str], input_name: str, place: dict[str, Any],
                   metadata: dict[str, Any] | None = None,
                   contrast: Sequence[tuple[float, float]] | None = None) -> list[tuple]:
    """One image LayerDataTuple per output channel of ``data`` (C, *spatial).

    ``place``: the layer arguments that put ``data[i]`` on the input's pixels (``scale``,
    ``translate`` and possibly ``affine``), from ``widgets.geometry.placement``.
    """
    tuples = []
    for i, channel in enumerate(channels):
        plane = data[i]
        if contrast is not None:
            limits = contrast[i]
        else:
            finite = np.asarray(plane)[np.isfinite(plane)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            limits = (lo, hi if hi > lo else lo + 1.0)
        kwargs = {
            "name": output_layer_name(input_name, channel),
            **place,
            "colormap": colormap_for(channel, i),
            "blending": "additive",
            "contrast_limits": limits,
            "metadata": dict(metadata or {}, channel=channel, source_layer=input_name),
        }
        tuples.append((plane, kwargs, "image"))
    return tuples
