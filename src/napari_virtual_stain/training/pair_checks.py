"""The checks on training pairs, with one sentence per problem (the dock, the command line
and scripts all get them from ``PairedPatches``), and the names and sizes those sentences use."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from .masks import has_data, target_channels


def size_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def layer_size_text(shape: Sequence[int]) -> str:
    return size_text(shape) + (" (ZxYxX)" if len(shape) == 3 else "")


def names_or_defaults(names: Sequence[str] | None, n: int, default: str) -> list[str]:
    names = list(names) if names is not None else []
    return [names[i] if i < len(names) else f"{default} {i + 1}" for i in range(n)]


def validate_pairs(inputs: Sequence, targets: Sequence, patch: Sequence[int], spatial_dims: int,
                   input_names: Sequence[str] | None = None,
                   target_names: Sequence[str] | None = None) -> list[list]:
    """Check that inputs and targets can be trained on; return the targets as channel lists.

    ``input_names`` name each pair's input layer, ``target_names`` each target channel
    (used in the messages). Raises :class:`InputError` with a sentence for: a different
    number of inputs and targets, wrong numbers of axes, inputs with different channel
    counts, a target whose shape differs from its input, an empty input or target
    channel (all zeros or all missing in every pair), or a layer smaller than the patch.
    """
    if spatial_dims not in (2, 3):
        raise InputError(f"Training needs 2D or 3D data, not {spatial_dims}D.")
    patch = tuple(int(p) for p in patch)
    if len(patch) != spatial_dims:
        raise InputError(f"The training patch {size_text(patch)} must have {spatial_dims} sizes for {spatial_dims}D data.")
    if any(p < 1 for p in patch):
        raise InputError(f"The training patch {size_text(patch)} must be at least 1 pixel along every axis.")
    if len(inputs) == 0:
        raise InputError("Choose at least one input layer to train on.")
    if len(inputs) != len(targets):
        raise InputError(f"There are {len(inputs)} input images but {len(targets)} target sets: give one target set per input.")
    in_names = names_or_defaults(input_names, len(inputs), "input")
    axes = "(channels, Y, X)" if spatial_dims == 2 else "(channels, Z, Y, X)"

    channel_lists = []
    n_channels = None
    for i, (image, target) in enumerate(zip(inputs, targets)):
        shape = tuple(int(s) for s in image.shape)
        if len(shape) != spatial_dims + 1:
            raise InputError(f"'{in_names[i]}' has shape {size_text(shape)}, but a {spatial_dims}D model needs {axes}.")
        if n_channels is None:
            n_channels = shape[0]
        elif shape[0] != n_channels:
            raise InputError(f"'{in_names[i]}' has {shape[0]} channels but '{in_names[0]}' has {n_channels}: every input must have the same channels.")
        spatial = shape[1:]
        channels = target_channels(target, spatial_dims)
        if not channels:
            raise InputError(f"'{in_names[i]}' has no target: give at least one target channel for every input.")
        channel_lists.append(channels)
        t_names = names_or_defaults(target_names, len(channels), "target")
        for name, channel in zip(t_names, channels):
            if channel is not None and tuple(channel.shape) != spatial:
                raise InputError(f"The target layer '{name}' is {layer_size_text(channel.shape)} but the input is "
                                 f"{layer_size_text(spatial)}: pairs must have the same shape.")
        if any(s < p for s, p in zip(spatial, patch)):
            raise InputError(f"The layer '{in_names[i]}' is {layer_size_text(spatial)}, smaller than the "
                             f"{size_text(patch)} training patch: choose a smaller patch or a larger layer.")
        low, high = _finite_range(image)
        if low is None or (low == 0 and high == 0):
            raise InputError(f"'{in_names[i]}' is empty (all zeros or all missing).")
        if low == high:
            raise InputError(f"'{in_names[i]}' holds the same value ({low:g}) everywhere: there is nothing to learn from.")

    counts = {len(c) for c in channel_lists}
    if len(counts) != 1:
        raise InputError(f"The pairs have different numbers of target channels ({', '.join(map(str, sorted(counts)))}): "
                         "mark a channel missing for a pair with None or NaN instead of leaving it out.")
    t_names = names_or_defaults(target_names, len(channel_lists[0]), "target")
    for t, name in enumerate(t_names):
        if not any(has_data(channels[t]) for channels in channel_lists):
            raise InputError(f"'{name}' is empty (all zeros or all missing).")
    return channel_lists


def _finite_range(image) -> tuple[float | None, float | None]:
    values = np.asarray(image)
    if np.issubdtype(values.dtype, np.floating):
        values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(values.min()), float(values.max())
