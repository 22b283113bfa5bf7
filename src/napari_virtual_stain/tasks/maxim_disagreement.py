"""Where an acquired marker and its imputation disagree: the acquired channel fitted onto the
imputation (robust to failed areas), the smoothed difference map and its boxes, and the level
that map reaches on good data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .maxim_qc_settings import QCSettings


@dataclass
class Box:
    """A flagged area in whole-image pixel coordinates (stop exclusive)."""

    y0: int
    x0: int
    y1: int
    x1: int
    area: int  # flagged pixels inside the box
    mean_difference: float  # acquired - imputed, averaged over the flagged pixels
    kind: str  # "weaker" or "stronger"


def align_to(acquired: np.ndarray, imputed: np.ndarray, keep: float = 0.6, iterations: int = 4) -> np.ndarray:
    """``a * acquired + b`` fitted to ``imputed`` by trimmed least squares.

    The percentile scaling of a channel moves when part of it fails (a blanked region
    drags its 1st percentile to 0 and lifts everything else), which would paint the whole
    channel as disagreeing. The fit keeps the best-agreeing ``keep`` share of pixels in
    each iteration, so failed areas (outliers) do not set the scale. A fit that would
    invert the channel (a <= 0, e.g. pure noise) leaves it as it is.
    """
    x = acquired.astype(np.float64).ravel()
    y = imputed.astype(np.float64).ravel()
    step = max(1, x.size // 250_000)
    xs, ys = x[::step], y[::step]
    finite = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[finite], ys[finite]
    a, b = 1.0, 0.0  # both are in the same [0, 1] unit already: start from the identity
    for _ in range(iterations):
        residual = np.abs(a * xs + b - ys)
        chosen = residual <= np.quantile(residual, keep) if residual.size else residual > 0
        if chosen.sum() < 3 or np.ptp(xs[chosen]) == 0:
            return acquired
        a, b = np.polyfit(xs[chosen], ys[chosen], 1)
    if not a > 0:
        return acquired
    return (a * acquired + b).astype(np.float32)


def local_error_level(acquired: np.ndarray, imputed: np.ndarray, sigma: float | None = None,
                      percentile: float = 99.9) -> float:
    """The ``percentile`` of the smoothed |acquired - imputed| map (as the QC computes it) on good data."""
    sigma = QCSettings().smooth_sigma if sigma is None else sigma
    aligned = align_to(acquired, imputed)
    smoothed = ndimage.gaussian_filter(np.abs(aligned.astype(np.float32) - imputed.astype(np.float32)), sigma)
    return float(np.percentile(smoothed, percentile))


def disagreement_regions(acquired: np.ndarray, imputed: np.ndarray, threshold: float, sigma: float,
                         min_area: int, offset: Sequence[int] = (0, 0)) -> tuple[np.ndarray, list[Box]]:
    """Smoothed |acquired - imputed| and the boxes of its connected areas above ``threshold``."""
    difference = acquired.astype(np.float32) - imputed.astype(np.float32)
    smoothed_abs = ndimage.gaussian_filter(np.abs(difference), sigma, mode="reflect")
    smoothed_signed = ndimage.gaussian_filter(difference, sigma, mode="reflect")
    labels, n = ndimage.label(smoothed_abs > threshold)
    boxes = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        inside = labels[sl] == index
        area = int(inside.sum())
        if area < min_area:
            continue
        mean_diff = float(smoothed_signed[sl][inside].mean())
        boxes.append(Box(sl[0].start + offset[0], sl[1].start + offset[1], sl[0].stop + offset[0],
                         sl[1].stop + offset[1], area, mean_diff, "weaker" if mean_diff < 0 else "stronger"))
    boxes.sort(key=lambda b: -b.area)
    return smoothed_abs.astype(np.float32), boxes
