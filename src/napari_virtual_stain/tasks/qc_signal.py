"""The signal measures of the training-free QC: a marker above its background, where the tissue
is (from the other markers), and whether a marker has spatial structure at all."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def signal_of(channel: np.ndarray, percentile: float) -> tuple[np.ndarray, float, float]:
    """The channel above its background (a low percentile), that background and its noise (MAD)."""
    x = np.asarray(channel, dtype=np.float32)
    background = float(np.percentile(x, percentile))
    low = x[x <= np.percentile(x, 50)]
    noise = float(1.4826 * np.median(np.abs(low - np.median(low)))) if low.size else 0.0
    return np.clip(x - background, 0, None), background, noise


def tissue_evidence(signals: Sequence[np.ndarray], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per marker, each signal smoothed and scaled by its own 99th percentile, clipped to [0, 1]
    (``(K, Y, X)``: a sparse marker's rare bright spots cannot outweigh the others), and their sum."""
    scaled = []
    for s in signals:
        smooth = ndimage.gaussian_filter(s, sigma, mode="reflect")
        high = float(np.percentile(smooth, 99))
        scaled.append(np.clip(smooth / high, 0, 1) if high > 0 else np.zeros_like(smooth))
    if not scaled:
        return np.zeros((0, 1, 1), np.float32), np.zeros((1, 1), np.float32)
    scaled = np.stack(scaled)
    return scaled, scaled.sum(axis=0)


def structure_ratio(signal: np.ndarray, sigma: float, seed: int = 0) -> float:
    """Variance of the smoothed signal over that of the smoothed shuffled signal (1 = no structure)."""
    smooth_var = float(ndimage.gaussian_filter(signal, sigma).var())
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(signal.ravel()).reshape(signal.shape)
    shuffled_var = float(ndimage.gaussian_filter(shuffled, sigma).var())
    return smooth_var / shuffled_var if shuffled_var > 0 else math.nan
