"""pix2pixHD's objective: a GAN loss over every scale of a multi-scale critic, plus feature matching.

With a ``models.pix2pixhd.MultiscaleDiscriminator`` the critic's output is, per scale, a
list of feature maps with the patch scores last. pix2pixHD (Wang et al. 2018, used by
paper 000, which drops the VGG perceptual term) trains with

- the GAN loss (least squares in pix2pixHD) summed over the scales, for the critic
  (``multiscale_critic_loss``, real -> 1, fake -> 0, halved as in pix2pix) and for the
  generator (``multiscale_generator_loss``);
- feature matching (``feature_matching_loss``): the L1 distance between the critic's
  intermediate features of the real target and of the prediction, each term weighted by
  ``lambda_feat * (1 / num_D) * (4 / (n_layers + 1))`` exactly as pix2pixHD's code does.

Missing targets are handled as in the rest of the training code (paper 002): both the
real target and the prediction are masked with ``adversarial.mask_for_critic`` before the
critic sees them, so what the network predicts where the target is missing cannot change
any of these losses, and a batch without any target gives a feature-matching loss of 0.

``strategies.Pix2PixHDFeatureMatching`` is the Trainer's step with these losses: the critic
update, then the generator update on ``reconstruction + gan_weight * (GAN + feature matching)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import adversarial
from .adversarial import critic_layers_for

MultiscaleOutputs = list  # list (per scale) of lists of feature maps, the scores last
MULTISCALE_GAN_KINDS = ("vanilla", "lsgan")
DEFAULT_LAMBDA_FEAT = 10.0  # pix2pixHD's --lambda_feat
MIN_CRITIC_INPUT = 6  # the smallest side a 1-layer PatchGAN still scores (critic_layers_for)


def is_multiscale(outputs) -> bool:
    """True for a multi-scale critic's output (a list of per-scale feature lists)."""
    return isinstance(outputs, (list, tuple)) and bool(outputs) and isinstance(outputs[0], (list, tuple))


def _check_kind(kind: str) -> None:
    if kind not in MULTISCALE_GAN_KINDS:
        raise ValueError(f"the multi-scale critic trains with {' or '.join(MULTISCALE_GAN_KINDS)} GAN losses, "
                         f"not {kind!r} (WGAN-GP needs a single-score critic)")


def multiscale_critic_loss(kind: str, real_outputs: MultiscaleOutputs, fake_outputs: MultiscaleOutputs) -> torch.Tensor:
    """The critic's loss summed over the scales (pix2pixHD sums its discriminators' losses)."""
    _check_kind(kind)
    return sum(adversarial.critic_loss(kind, real[-1], fake[-1]) for real, fake in zip(real_outputs, fake_outputs))


def multiscale_generator_loss(kind: str, fake_outputs: MultiscaleOutputs) -> torch.Tensor:
    """The generator's adversarial term summed over the scales."""
    _check_kind(kind)
    return sum(adversarial.generator_adversarial_loss(kind, fake[-1]) for fake in fake_outputs)


def feature_matching_loss(fake_outputs: MultiscaleOutputs, real_outputs: MultiscaleOutputs,
                          lambda_feat: float = DEFAULT_LAMBDA_FEAT) -> torch.Tensor:
    """pix2pixHD's feature-matching loss: weighted L1 between the critic's intermediate features.

    The scores (last map of each scale) are not matched; the real features are constants
    (detached). Weights: ``lambda_feat / num_D * 4 / (n_layers + 1)`` per feature map, with
    n_layers = maps per scale - 2 (pix2pixHD's ``feat_weights`` and ``D_weights``).
    """
    num_d = len(fake_outputs)
    total = fake_outputs[0][0].new_zeros(())
    for fake, real in zip(fake_outputs, real_outputs):
        n_layers = len(fake) - 2
        weight = lambda_feat / num_d * 4.0 / (n_layers + 1)
        for f, r in zip(fake[:-1], real[:-1]):
            total = total + weight * F.l1_loss(f, r.detach())
    return total


def make_multiscale_critic(in_channels: int, out_channels: int, patch: tuple[int, ...], num_D: int = 3,
                           ndf: int = 32, n_layers: int = 3):
    """A conditional ``MultiscaleDiscriminator`` that fits the patch.

    Scales are dropped while the coarsest would be smaller than a PatchGAN can score, and
    n_layers is reduced so the coarsest scale still gives at least one score (instance
    norm, as ``adversarial.make_critic``).
    """
    from ..models.pix2pixhd import MultiscaleDiscriminator

    smallest = min(int(p) for p in patch)
    scales = 1
    while scales < num_D and -(-smallest // 2**scales) >= MIN_CRITIC_INPUT:
        scales += 1
    coarsest = -(-smallest // 2 ** (scales - 1))
    layers = critic_layers_for((coarsest,), n_layers)
    return MultiscaleDiscriminator(in_channels + out_channels, ndf=ndf, n_layers=layers, num_D=scales, norm="instance")
