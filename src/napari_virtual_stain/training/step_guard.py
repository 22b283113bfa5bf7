"""The non-finite guard: the one place an optimiser step is taken (``Trainer.update`` calls it).

A step whose loss or gradients are not finite is skipped (no weight update), as a gradient
scaler does: a rare overflow (seen with bf16 autocast in 3D) must not poison the weights.
"""

from __future__ import annotations

import torch
from torch import nn

# This many skipped steps in a row mean the run has diverged (the Trainer stops with a sentence).
MAX_BAD_STEPS_IN_A_ROW = 5


def apply_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor,
               scaler: torch.amp.GradScaler | None = None) -> bool:
    """Take the optimiser step only when the loss and every gradient are finite (a
    non-finite step is skipped and counted, never applied). With ``scaler`` (the loss was
    scaled before ``backward``) the gradients are unscaled first, so the guard judges the
    true gradients, and the scaler's scale is updated either way (it shrinks after a
    skipped step: it saw the same inf or NaN while unscaling)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    # one host sync for the loss and all gradients together (not one per parameter: on a GPU
    # each bool() waits for the device)
    checks = [torch.isfinite(loss.detach()).all()]
    checks += [torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None]
    finite = bool(torch.stack(checks).all())
    if finite:
        if scaler is not None:
            scaler.step(optimizer)  # already unscaled: steps with these gradients
        else:
            optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.update()
    return finite
