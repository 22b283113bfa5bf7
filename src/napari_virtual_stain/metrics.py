"""Image metrics for predicted vs real stains: SSIM, PSNR, PCC, MAE, MSE.

All functions take numpy arrays of the same spatial shape (2D or 3D, no channel axis)
and an optional boolean ``mask`` of pixels to score (True = the target exists there).
Pixels outside the mask never change a score: they are set to zero in both images
before SSIM's local windows are computed, as the masked loss of paper 002 does, and are
left out of every mean. Scores are plain Python floats; a score that cannot be computed
(no valid pixel, a constant image for PCC) is ``nan``, a perfect PSNR is ``inf``.

``channel_scores`` scores every channel of a (C, ...) prediction at once; the trainer
and the demo script store its result in a model card.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

# SSIM as Wang et al. 2004 and skimage with gaussian_weights=True: sigma 1.5, an
# 11-pixel window (truncate 3.5 -> radius 5), K1 0.01, K2 0.03, population covariances.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _prepare(pred, target, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    valid = np.isfinite(target) & np.isfinite(pred)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != target.shape:
            raise ValueError(f"mask {mask.shape} and target {target.shape} differ in shape")
        valid &= mask
    return pred, target, valid


def mae(pred, target, mask=None) -> float:
    """Mean absolute error over the valid pixels."""
    pred, target, valid = _prepare(pred, target, mask)
    if not valid.any():
        return float("nan")
    return float(np.abs(pred[valid] - target[valid]).mean())


def mse(pred, target, mask=None) -> float:
    """Mean squared error over the valid pixels."""
    pred, target, valid = _prepare(pred, target, mask)
    if not valid.any():
        return float("nan")
    return float(((pred[valid] - target[valid]) ** 2).mean())


def psnr(pred, target, mask=None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for images scaled to ``data_range``."""
    error = mse(pred, target, mask)
    if np.isnan(error):
        return float("nan")
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / error))


def pcc(pred, target, mask=None) -> float:
    """Pearson correlation over the valid pixels (nan when either side is constant)."""
    pred, target, valid = _prepare(pred, target, mask)
    if valid.sum() < 2:
        return float("nan")
    a = pred[valid] - pred[valid].mean()
    b = target[valid] - target[valid].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0:
        return float("nan")
    return float((a * b).sum() / denom)


def ssim_map(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Local SSIM at every pixel (gaussian windows; the border is reflected)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)

    def blur(a):
        return ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_x, mu_y = blur(pred), blur(target)
    var_x = blur(pred * pred) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(pred * target) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(pred, target, mask=None, data_range: float = 1.0) -> float:
    """Mean SSIM over the valid pixels, leaving out a window radius at the border.

    Without a mask this equals ``skimage.metrics.structural_similarity`` with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``. Axes shorter than
    the window (thin Z stacks) keep their border, otherwise nothing would be left.
    """
    pred, target, valid = _prepare(pred, target, mask)
    pred = np.where(valid, pred, 0.0)
    target = np.where(valid, target, 0.0)
    local = ssim_map(pred, target, data_range)
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    inner = tuple(slice(radius, n - radius) if n > 2 * radius else slice(None) for n in local.shape)
    local, valid = local[inner], valid[inner]
    if not valid.any():
        return float("nan")
    return float(local[valid].mean())


METRICS = {"ssim": ssim, "psnr": psnr, "pcc": pcc, "mae": mae, "mse": mse}


def channel_scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                   names: Sequence[str] | None = None, metrics: Sequence[str] = ("ssim", "psnr", "pcc", "mae"),
                   data_range: float = 1.0) -> dict[str, dict[str, float]]:
    """Score each channel of (C, ...) arrays: ``{name: {metric: value}}``.

    NaN target pixels count as missing. A channel with no valid pixel at all is left out
    of the result rather than scored as nan, so the card lists only what was measured.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    names = list(names) if names is not None else [f"channel {i}" for i in range(pred.shape[0])]
    result: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        m = None if mask is None else mask[c]
        _, _, valid = _prepare(pred[c], target[c], m)
        if not valid.any():
            continue
        scores = {}
        for metric in metrics:
            fn = METRICS[metric]
            scores[metric] = fn(pred[c], target[c], m, data_range) if metric in ("ssim", "psnr") else fn(pred[c], target[c], m)
        result[name] = scores
    return result


def mean_scores(per_channel: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average each metric over channels, ignoring nan (for one-line summaries)."""
    keys = {k for scores in per_channel.values() for k in scores}
    out = {}
    for k in sorted(keys):
        values = [s[k] for s in per_channel.values() if k in s and np.isfinite(s[k])]
        out[k] = float(np.mean(values)) if values else float("nan")
    return out


def tiled_channel_scores(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                         masks: Sequence[np.ndarray] | None = None, names: Sequence[str] | None = None,
                         data_range: float = 1.0) -> dict[str, dict[str, float]]:
    """Score separate (C, ...) tiles per channel: ``{name: {metric: value}}``.

    ``preds``/``targets``/``masks`` are sequences of tiles (an (N, C, ...) array works
    too); tiles may differ in shape. PCC, MAE and PSNR pool the valid pixels of all
    tiles; SSIM is computed per tile (its windows must not cross from one tile into the
    next) and averaged, weighted by each tile's valid pixels. Channels without any valid
    pixel are left out.
    """
    if len(preds) != len(targets) or (masks is not None and len(masks) != len(preds)):
        raise ValueError("give as many prediction, target and mask tiles")
    if len(preds) == 0:
        return {}
    n_channels = np.asarray(preds[0]).shape[0]
    names = list(names) if names is not None else [f"channel {i}" for i in range(n_channels)]
    result: dict[str, dict[str, float]] = {}
    for ch, name in enumerate(names):
        flat_p, flat_t, weights, values = [], [], [], []
        for i in range(len(preds)):
            m = None if masks is None else np.asarray(masks[i][ch], dtype=bool)
            p, t, valid = _prepare(np.asarray(preds[i][ch]), np.asarray(targets[i][ch]), m)
            count = int(valid.sum())
            if not count:
                continue
            flat_p.append(p[valid])
            flat_t.append(t[valid])
            value = ssim(p, t, valid, data_range)
            if np.isfinite(value):
                weights.append(count)
                values.append(value)
        if not flat_p:
            continue
        p, t = np.concatenate(flat_p), np.concatenate(flat_t)
        result[name] = {
            "ssim": float(np.average(values, weights=weights)) if values else float("nan"),
            "psnr": psnr(p, t, None, data_range),
            "pcc": pcc(p, t),
            "mae": mae(p, t),
        }
    return result
