"""2.5D training pairs: stacks cut into windows of planes (as channels) and their centre targets."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..engine.normalise import compute_stats
from ..errors import InputError
from ..models.zwindow import ZWindow
from .masks import target_channels
from .pair_checks import names_or_defaults, size_text


def window_pairs(inputs: Sequence, targets: Sequence, window: ZWindow, spec: dict,
                 names: Sequence[str] | None = None) -> tuple[list, list, list[dict], list[str]]:
    """2D pairs of a 2.5D model from stacks: (windows as channels, target planes, input stats, names).

    The statistics are each stack's, per original channel, repeated for its planes, so a
    window is normalised exactly as the Predictor normalises it inside a whole stack.
    """
    if len(inputs) != len(targets):
        raise InputError(f"There are {len(inputs)} input images but {len(targets)} target sets: give one target set per input.")
    xs, ys, stats, labels = [], [], [], []
    for image, target, name in zip(inputs, targets, names_or_defaults(names, len(inputs), "input")):
        image = np.asarray(image)
        if image.ndim == 3:
            window.check_stack(None, f"'{name}'")  # one plane (C, Y, X): a sentence about stacks
        if image.ndim != 4:
            raise InputError(f"'{name}' has shape {size_text(image.shape)}, but a 2.5D model needs (channels, Z, Y, X).")
        window.check_stack(image.shape[1], f"'{name}'")
        n_planes = image.shape[1]
        channels = target_channels(target, 2) if not (hasattr(target, "ndim") and target.ndim == 4) else list(target)
        kinds = {len(c.shape) for c in channels if c is not None}
        if len(kinds) > 1:
            raise InputError(f"The targets of '{name}' mix single planes and z-stacks: give all planes or all stacks.")
        whole = compute_stats(image, spec)
        repeated = {**whole, **{k: [v for v in whole[k] for _ in range(window.planes)] for k in ("low", "high")
                               if isinstance(whole.get(k), list)}}
        if kinds == {3}:  # a target stack: one pair per plane with a whole window
            planes = [z for z in range(n_planes) if window.is_full(z, n_planes)]
            for z in planes:
                start = z - window.centre
                xs.append(window.as_channels(image[:, start:start + window.planes]))
                ys.append([None if c is None else c[z] for c in channels])
                stats.append(repeated)
                labels.append(f"{name} z{z}")
            continue
        if n_planes != window.planes:
            raise InputError(f"The target of '{name}' is a single plane but the stack has {n_planes} planes and the "
                             f"model reads {window.planes}: crop the stack to the {window.planes} planes around the "
                             "target's plane (`virtual-stain train --target-plane Z` does it).")
        xs.append(window.as_channels(image))
        ys.append(channels)
        stats.append(repeated)
        labels.append(name)
    return xs, ys, stats, labels
