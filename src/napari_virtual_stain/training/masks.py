"""Partially labelled targets: which target pixels exist.

A pair's targets come either as one (T, *spatial) array or as a list of T per-channel
arrays, where ``None`` stands for a channel that was not imaged for this pair. NaN
pixels are missing pixels (paper 002 fills void channels with NaN); an all-NaN channel
is a missing channel. The network is trained only where the target exists.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def target_channels(target, n_spatial: int) -> list:
    """Split one pair's targets into a list of per-channel arrays (or None for missing).

    ``target`` is a (T, *spatial) array, a single spatial array (one channel), or a
    sequence of spatial arrays / None. Arrays are not copied.
    """
    if target is None:
        return []
    if isinstance(target, (list, tuple)):
        return [None if t is None else t for t in target]
    ndim = len(target.shape)
    if ndim == n_spatial:
        return [target]
    return [target[i] for i in range(target.shape[0])]


def valid_mask(channel) -> np.ndarray:
    """True where a target channel has a finite value."""
    channel = np.asarray(channel)
    if np.issubdtype(channel.dtype, np.integer) or channel.dtype == bool:
        return np.ones(channel.shape, dtype=bool)
    return np.isfinite(channel)


def has_data(channel) -> bool:
    """True when a channel exists, has finite values and is not all zeros."""
    if channel is None:
        return False
    values = np.asarray(channel)
    if np.issubdtype(values.dtype, np.floating):
        values = values[np.isfinite(values)]
    return values.size > 0 and bool(np.any(values != 0))


def coverage(masks: Sequence[np.ndarray | None]) -> np.ndarray:
    """Fraction of valid pixels per channel (0 for a missing channel)."""
    return np.array([0.0 if m is None else float(np.mean(m)) for m in masks])
