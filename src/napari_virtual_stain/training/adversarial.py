"""Adversarial training pieces: conditional critics, GAN losses and the gradient penalty.

Three kinds (``GAN_KINDS``):
- ``vanilla``  pix2pix's conditional GAN, binary cross-entropy on logits (paper 000/001).
- ``lsgan``    least-squares GAN, the same with mean squared error (paper 000).
- ``wgan-gp``  Wasserstein GAN with gradient penalty (paper 002): the critic gives a
               realness score, its loss is D(fake) - D(real) + lambda * (|grad| - 1)^2,
               it is updated n_critic times per generator step, with RMSprop.

The critic is conditional: it sees the input channels concatenated with either the
real target or the *masked* prediction, where channels/pixels missing from the target
are zeroed in both (paper 002), so it cannot tell real from fake by which channels
are empty.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GAN_KINDS = ("vanilla", "lsgan", "wgan-gp")

# Defaults per kind: pix2pix weighs L1 by 100 against an adversarial term of 1, i.e.
# an adversarial weight of 0.01 relative to the reconstruction; paper 002 uses 0.05,
# lambda_gp 10, n_critic 5.
DEFAULT_GAN_WEIGHT = {"vanilla": 0.01, "lsgan": 0.01, "wgan-gp": 0.05}
DEFAULT_N_CRITIC = {"vanilla": 1, "lsgan": 1, "wgan-gp": 5}


def critic_layers_for(patch: tuple[int, ...], wanted: int = 3) -> int:
    """How many stride-2 levels a PatchGAN can have so its output is still >= 1 pixel.

    A PatchGAN with n layers halves the size n times, then two 4x4 convolutions each
    take one pixel off; the smallest patch axis must therefore be at least 3 * 2**n.
    """
    smallest = min(patch)
    fits = int(math.floor(math.log2(max(smallest, 1) / 3))) if smallest >= 6 else 1
    return max(1, min(wanted, fits))


def make_critic(in_channels: int, out_channels: int, spatial_dims: int, patch: tuple[int, ...],
                kind: str, ndf: int = 32, n_layers: int = 3) -> nn.Module:
    """A conditional PatchGAN critic sized to the patch.

    Instance normalisation throughout: batch norm would couple the samples of a batch
    and break the per-sample gradient penalty of WGAN-GP (paper 002 uses instance norm).
    """
    from ..models.patchgan import PatchGAN

    if kind not in GAN_KINDS:
        raise ValueError(f"unknown GAN kind {kind!r}; choose one of {', '.join(GAN_KINDS)}")
    return PatchGAN(in_channels + out_channels, ndf=ndf, n_layers=critic_layers_for(patch, n_layers),
                    spatial_dims=spatial_dims, norm="instance")


def mask_for_critic(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the missing channels/pixels, so real and fake have the same empty places."""
    return torch.where(mask > 0, y, torch.zeros_like(y))


def critic_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic's loss without the gradient penalty (added separately for WGAN-GP)."""
    if kind == "vanilla":
        return 0.5 * (F.binary_cross_entropy_with_logits(real_scores, torch.ones_like(real_scores))
                      + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores)))
    if kind == "lsgan":
        return 0.5 * (F.mse_loss(real_scores, torch.ones_like(real_scores))
                      + F.mse_loss(fake_scores, torch.zeros_like(fake_scores)))
    if kind == "wgan-gp":
        return fake_scores.mean() - real_scores.mean()
    raise ValueError(f"unknown GAN kind {kind!r}")


def generator_adversarial_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term: make the critic call its output real."""
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))
    if kind == "lsgan":
        return F.mse_loss(fake_scores, torch.ones_like(fake_scores))
    if kind == "wgan-gp":
        return -fake_scores.mean()
    raise ValueError(f"unknown GAN kind {kind!r}")


def gradient_penalty(critic: nn.Module, condition: torch.Tensor | None, real: torch.Tensor,
                     fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP's E[(||grad_y D(x, y_hat)||_2 - 1)^2] at random points between real and fake.

    ``condition`` (the input channels, or None for an unconditional critic) is held fixed;
    the gradient is taken with respect to the target part only, as in paper 002's
    algorithm. The critic's patch scores are averaged per sample, so each sample's
    gradient is that of its own mean score.
    """
    n = real.shape[0]
    eps = torch.rand((n,) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype, generator=generator)
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(mixed if condition is None else torch.cat([condition, mixed], dim=1))
    per_sample = scores.reshape(n, -1).mean(dim=1)
    (grads,) = torch.autograd.grad(per_sample.sum(), mixed, create_graph=True)
    norms = grads.reshape(n, -1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()
