"""The training precision policy: which precision a run trains in and whether it scales its loss.

Every step strategy runs its forward passes through ``Trainer.generate``/``critique``, which
autocast to the precision chosen here, and its updates through ``Trainer.update``, which
scales the loss when ``needs_grad_scaling`` says so.
"""

from __future__ import annotations

import torch

from ..engine.device import resolve_precision

# fp16 training on a GPU scales the loss (torch.amp.GradScaler, from 2**16) so that small
# gradients do not underflow fp16; while the scale is still too big the scaled gradients
# overflow and the step is skipped, and the scale halves. Up to 16 halvings (down to a scale
# of 1) are the scaler finding its scale, not divergence, so they are allowed on top.
SCALER_BACKOFFS = 16


def needs_grad_scaling(device: torch.device, precision: str) -> bool:
    """Whether training on ``device`` in ``precision`` scales its loss: fp16 on CUDA only (bf16
    has fp32's range and needs none; the CPU refuses fp16)."""
    return precision == "fp16" and device.type == "cuda"


def training_precision(device: torch.device, requested: str, spatial_dims: int) -> str:
    """The precision to train in: as ``engine.device.resolve_precision``, except that "auto"
    stays fp32 for 3D networks on the CPU. There, bf16 autocast gave occasional garbage
    weight gradients (|g| ~ 1e29, then inf) in a 3D U-Net's bottleneck with torch 2.13's
    CPU kernels, which ended the first demo-model run; 2D bf16 training was fine (and 2.3x
    faster per step than fp32 on this CPU).
    """
    if requested == "auto" and device.type == "cpu" and spatial_dims == 3:
        return "fp32"
    return resolve_precision(device, requested)
