"""The brightness reference of the imputation QC: each marker's raw range now against its range in
the imputers' training stack, relative to the other markers (information only: ordinary slide
variation reaches 3x)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .maxim import raw_range


def brightness_ratios(stack, names: Sequence[str], reference: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each marker's raw range (1st to 99.8th percentile) now, divided by its range in training."""
    ratios = {}
    for i, name in enumerate(names):
        ref = reference.get(name)
        if not ref:
            continue
        span_ref = float(ref["high"]) - float(ref["low"])
        if span_ref <= 0:
            continue
        low, high = raw_range(stack[i])
        ratios[name] = max(high - low, 0.0) / span_ref
    return ratios


def relative_to_others(ratios: Mapping[str, float], exclude: Sequence[str] = ()) -> dict[str, float]:
    """Each ratio divided by the median ratio of the other markers, leaving ``exclude`` out of
    the medians (markers already found failed must not move the reference of the others)."""
    out = {}
    for name, ratio in ratios.items():
        others = [r for n, r in ratios.items() if n != name and n not in exclude]
        median = float(np.median(others)) if others else 0.0
        if median > 0:
            out[name] = ratio / median
    return out


def relative_brightness(stack, names: Sequence[str], reference: Mapping[str, Mapping[str, float]],
                        exclude: Sequence[str] = ()) -> dict[str, float]:
    """Each marker's raw range now / in training, divided by the median of the other markers' ratios."""
    return relative_to_others(brightness_ratios(stack, names, reference), exclude)
