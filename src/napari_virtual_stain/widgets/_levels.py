"""The "whole-image level" choice of a dock: automatic, or one level of the input's pyramid.

A whole-image run on a slide at full resolution can mean 10^9 pixels; a coarser level is
often what the user wants (an overview, a check of the settings). "auto" is the level
nearest the model's pixel size (the full resolution when either size is unknown);
a plain (single-scale) layer has level 0 only.
"""

from __future__ import annotations

from .geometry import layer_levels

AUTO_LEVEL = "auto"


def level_choices(layer) -> list[str]:
    """``auto`` and one entry per level of ``layer``, e.g. "1: 2048 x 2048"."""
    if layer is None or not getattr(layer, "multiscale", False):
        return [AUTO_LEVEL]
    shapes = [tuple(int(n) for n in level.shape) for level in layer_levels(layer)]
    yx = [shape[-3:-1] if layer.rgb else shape[-2:] for shape in shapes]
    return [AUTO_LEVEL] + [f"{k}: {h} x {w}" for k, (h, w) in enumerate(yx)]


def chosen_level(value) -> int | None:
    """The level a choice names (None: automatic)."""
    if value is None or value == AUTO_LEVEL:
        return None
    return int(str(value).split(":")[0])
