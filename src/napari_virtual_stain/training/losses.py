"""Reconstruction losses, all masked for partially labelled targets.

Every loss is ``loss(pred, target, mask) -> scalar tensor`` on (N, T, *spatial) tensors,
where ``mask`` is 1 where the target exists and 0 where it is missing (a NaN pixel or a
whole channel not imaged for that pair). As in paper 002, missing pixels are excluded:
the error is computed without reduction, masked, and averaged over the valid pixels
only, so whatever the network predicts there changes nothing. A batch without any valid
pixel gives 0 (not NaN), which leaves the weights untouched.

Names (``make_loss``):
- ``l1``        mean absolute error (pix2pix's reconstruction term).
- ``smooth_l1`` Huber / smooth L1 with beta 1 (paper 001, as torch's SmoothL1Loss that
                DeepLIIF uses): quadratic for small errors, linear for outliers.
- ``ssim_l1``   alpha * (1 - SSIM) + (1 - alpha) * L1 (paper 000, eq. 6; 11-px gaussian window).
- ``l1_l2``     alpha * L1 + (1 - alpha) * L2 (paper 003, MAXIM; alpha 0.5 there).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LOSS_NAMES = ("l1", "smooth_l1", "ssim_l1", "l1_l2")

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_C1 = 0.01**2  # targets are scaled to [0, 1], so data_range is 1
SSIM_C2 = 0.03**2


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Sum over valid pixels divided by their count; clamp keeps 0/0 at 0, never NaN.
    valid = mask > 0
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1)


def _difference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where rather than a product: a NaN left in the target must not leak into the loss.
    return torch.where(mask > 0, pred - target, torch.zeros_like(pred))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the valid pixels."""
    return _masked_mean(_difference(pred, target, mask).abs(), mask)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (pred - target)^2 over the valid pixels."""
    return _masked_mean(_difference(pred, target, mask) ** 2, mask)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Mean Huber loss over the valid pixels."""
    diff = _difference(pred, target, mask)
    return _masked_mean(F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none", beta=beta), mask)


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, windows: list[int]) -> torch.Tensor:
    """Separable gaussian blur of (B, 1, *spatial) without padding ('valid' windows)."""
    dims = x.dim() - 2
    conv = {2: F.conv2d, 3: F.conv3d}[dims]
    for axis, size in enumerate(windows):
        if size <= 1:
            continue
        kernel = _gaussian_1d(size, SSIM_SIGMA, x.device, x.dtype)
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = size
        x = conv(x, kernel.reshape(shape))
    return x


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Local SSIM of (N, T, *spatial) tensors in the valid interior; also returns the windows.

    The window is 11 pixels, shrunk to the largest odd size that fits along short axes
    (thin Z stacks), so a 3D patch of 8 planes still has an SSIM.
    """
    n, t = pred.shape[:2]
    spatial = pred.shape[2:]
    windows = [min(SSIM_WINDOW, s if s % 2 else s - 1) for s in spatial]
    x = pred.reshape(n * t, 1, *spatial)
    y = target.reshape(n * t, 1, *spatial)
    mu_x, mu_y = _blur_valid(x, windows), _blur_valid(y, windows)
    var_x = _blur_valid(x * x, windows) - mu_x**2
    var_y = _blur_valid(y * y, windows) - mu_y**2
    cov = _blur_valid(x * y, windows) - mu_x * mu_y
    local = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return local.reshape(n, t, *local.shape[2:]), windows


def masked_ssim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (1 - SSIM) over the valid pixels' windows.

    Missing pixels are zeroed in both images first (paper 002's masked prediction), so
    the windows around valid pixels never see what the network put there.
    """
    zero = torch.zeros_like(pred)
    valid = mask > 0
    local, windows = ssim_map(torch.where(valid, pred, zero), torch.where(valid, target, zero))
    # The 'valid' convolution drops (w-1)/2 pixels at each border; crop the mask alike.
    inner = tuple(slice((w - 1) // 2, s - (w - 1) // 2) for w, s in zip(windows, mask.shape[2:]))
    return _masked_mean(1.0 - local, mask[(slice(None), slice(None)) + inner])


def make_loss(name: str, alpha: float = 0.5) -> LossFn:
    """A masked reconstruction loss by name (see the module docstring); alpha weights the mix."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    if name == "l1":
        return masked_l1
    if name == "smooth_l1":
        return masked_smooth_l1

    if name == "ssim_l1":
        def ssim_l1(pred, target, mask):
            return alpha * masked_ssim_loss(pred, target, mask) + (1 - alpha) * masked_l1(pred, target, mask)
        return ssim_l1

    def l1_l2(pred, target, mask):
        return alpha * masked_l1(pred, target, mask) + (1 - alpha) * masked_l2(pred, target, mask)
    return l1_l2
