"""Which input markers drive an imputation: integrated gradients with a zero baseline.

As in paper 003: the attribution of every input pixel to the imputed image (the sum of
the output), by integrated gradients (Sundararajan et al. 2017) from an all-zero input
to the actual (normalised) input; per marker, the sum of absolute attributions, as a
percentage of the total over all markers. The pairwise correlation of the markers'
attribution maps is returned too (the paper's Fig. 2E).

Integrated gradients need one backward pass per step over the whole window, so a large
image is attributed on a window (the current view, or the central ``max_size`` square).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..engine.device import resolve_device
from ..engine.normalise import compute_stats, normalise
from ..errors import InputError, check_cancel
from ..models.card import ModelCard
from .maxim import check_marker_stack, check_model_fits, imputer_target, model_inputs
from .region import Region


@dataclass
class Attribution:
    target: str
    markers: list[str]  # the model's input markers, in card order
    percent: dict[str, float]  # share of total |attribution| per input marker, sums to 100
    signed: dict[str, float]  # sum of signed attributions per marker (network output units)
    correlation: np.ndarray  # (M, M) Pearson correlation of the markers' attribution maps
    maps: np.ndarray  # (M, Y, X) attributions over ``window``
    window: Region  # the part of the image attributed
    completeness: float  # sum of attributions - (F(x) - F(0)), ~0 with enough steps


def central_window(spatial: Sequence[int], max_size: int) -> Region:
    start = tuple(max(0, (s - max_size) // 2) for s in spatial)
    stop = tuple(min(s, a + max_size) for s, a in zip(spatial, start))
    return Region(start, stop)


def integrated_gradients(model: torch.nn.Module, x: torch.Tensor, steps: int = 32, batch: int = 4,
                         progress: Callable[[int, int], None] | None = None, cancel=None) -> tuple[torch.Tensor, float]:
    """Integrated gradients of ``model(x).sum()`` for one input ``x`` (1, C, ...), zero baseline.

    Midpoint Riemann sum over ``steps`` points of the straight path 0 -> x. Returns the
    attributions (C, ...) and the completeness gap sum(attr) - (F(x) - F(0)).
    """
    if steps < 1:
        raise InputError(f"Integrated gradients need at least one step, not {steps}.")
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total_grad = torch.zeros_like(x[0])
    for start in range(0, steps, batch):
        check_cancel(cancel)
        a = alphas[start:start + batch].reshape((-1,) + (1,) * (x.dim() - 1))
        path = (a * x).detach().requires_grad_(True)
        out = model(path)
        (grad,) = torch.autograd.grad(out.sum(), path)
        total_grad += grad.sum(0)
        if progress is not None:
            progress(min(start + batch, steps), steps)
    attributions = x[0] * total_grad / steps
    with torch.no_grad():
        gap = float(attributions.sum() - (model(x).sum() - model(torch.zeros_like(x)).sum()))
    return attributions.detach(), gap


def attribute_marker(model: torch.nn.Module, card: ModelCard, stack, names: Sequence[str], *,
                     region: Region | None = None, max_size: int = 256, steps: int = 32,
                     missing: Sequence[str] = (), device: str = "cpu",
                     progress: Callable[[int, int], None] | None = None, cancel=None) -> Attribution:
    """Attribute ``card``'s imputed marker to its input markers over a window of the stack.

    ``region`` (default: the whole image) is reduced to its central ``max_size`` square if
    larger. Inputs are normalised as the Predictor does (the card's spec, statistics over
    the window).
    """
    names = check_marker_stack(stack, names)
    check_model_fits(card, names)
    target = imputer_target(card)
    spatial = tuple(int(s) for s in stack.shape[1:])
    region = region or Region.whole(spatial)
    inner = central_window(region.shape, max_size)
    window = Region(tuple(r + a for r, a in zip(region.start, inner.start)),
                    tuple(r + b for r, b in zip(region.start, inner.stop)))
    raw = model_inputs(stack, names, card, window, missing)
    spec = card.input_normalisation
    x = normalise(raw, spec, compute_stats(raw, spec))
    dev = resolve_device(device)
    model = model.to(dev).eval()
    tensor = torch.from_numpy(x)[None].to(dev)
    maps, gap = integrated_gradients(model, tensor, steps=steps, progress=progress, cancel=cancel)
    maps = maps.float().cpu().numpy()
    markers = list(card.input_channels)
    absolute = np.abs(maps).reshape(len(markers), -1).sum(1)
    total = float(absolute.sum())
    percent = {m: (100.0 * float(v) / total if total > 0 else 0.0) for m, v in zip(markers, absolute)}
    signed = {m: float(v) for m, v in zip(markers, maps.reshape(len(markers), -1).sum(1))}
    flat = maps.reshape(len(markers), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.corrcoef(flat) if flat.shape[1] > 1 else np.full((len(markers),) * 2, np.nan)
    return Attribution(target, markers, percent, signed, np.atleast_2d(correlation), maps, window, gap)
