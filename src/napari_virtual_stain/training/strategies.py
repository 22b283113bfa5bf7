"""Step strategies: what one training step of the ``Trainer`` does, as public objects.

A strategy's ``step(trainer, batch)`` gets the step's first batch ``(x, y, mask)`` (drawn by
``trainer.next_batch()``; a strategy that needs more, as the critic steps of a GAN do, draws
them the same way) and returns a dict of float losses, ``train_loss`` (the reconstruction
loss, what the history records) at least. It works only through the Trainer's three shared
services, so every strategy gets them the same way:

- ``trainer.generate(x)`` / ``trainer.critique(x, y)``: forward passes under the run's
  precision policy (autocast per ``training_precision``), outputs as float32;
- ``trainer.update(optimizer, module, loss)``: zero the gradients, backpropagate and take the
  optimiser step through the non-finite guard (a step whose loss or gradients are not
  finite is skipped, never applied);
- the Trainer itself counts a step as skipped unless the generator was updated through
  ``update`` in it, so a strategy cannot report a step that the guard refused.

Built in (``strategy_for`` picks one from the config, as the Trainer always did):
``Supervised`` (the masked reconstruction loss), ``Adversarial`` (pix2pix's vanilla or
least-squares GAN, or paper 002's WGAN-GP with its gradient penalty and n_critic critic
steps) and ``Pix2PixHDFeatureMatching`` (every scale of a multi-scale critic plus feature
matching, ``pix2pixhd_loss``). ``MaskedImputation`` (random channel masking, as masked
autoencoders do) is given as ``strategy=`` with a batch source whose target is its input
(``batch_sources.StackPatches``): the joint MAXIM imputer trains that way.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from . import adversarial
from .adversarial import mask_for_critic
from .pix2pixhd_loss import (DEFAULT_LAMBDA_FEAT, feature_matching_loss, multiscale_critic_loss,
                             multiscale_generator_loss)

Batch = tuple  # (x, y, mask) tensors on the trainer's device


@runtime_checkable
class StepStrategy(Protocol):
    """One training step: see the module docstring for what ``step`` may use and must return."""

    def step(self, trainer, batch: Batch) -> dict[str, float]: ...


class Supervised:
    """The masked reconstruction loss (``losses.make_loss``) on one batch, one generator update."""

    def step(self, trainer, batch: Batch) -> dict[str, float]:
        x, y, mask = batch
        loss = trainer.loss_fn(trainer.generate(x), y, mask)
        trainer.update(trainer.optimizer, trainer.model, loss)
        return {"train_loss": float(loss.detach())}


class _CriticThenGenerator:
    """What both GAN strategies share: ``n_critic`` critic updates, each on a fresh batch (paper
    002, algorithm 1), then one generator update on the last batch with the critic frozen."""

    def critic_loss(self, trainer, x, real, fake, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, trainer, x, pred, real, mask, recon, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def step(self, trainer, batch: Batch) -> dict[str, float]:
        critic = trainer.critic
        critic.train()
        critic.requires_grad_(True)
        out: dict[str, float] = {}
        for i in range(trainer.n_critic):
            x, y, mask = batch if i == 0 else trainer.next_batch()
            with torch.no_grad():
                fake = mask_for_critic(trainer.generate(x), mask)
            real = mask_for_critic(y, mask)
            loss = self.critic_loss(trainer, x, real, fake, out)
            trainer.update(trainer.critic_optimizer, critic, loss)
            out["critic_loss"] = float(loss.detach())
        critic.requires_grad_(False)  # the generator step must not train the critic
        try:
            pred = trainer.generate(x)
            recon = trainer.loss_fn(pred, y, mask)
            loss = self.generator_loss(trainer, x, pred, real, mask, recon, out)
            trainer.update(trainer.optimizer, trainer.model, loss)
        finally:
            critic.requires_grad_(True)
        out["train_loss"] = float(recon.detach())
        return out


class Adversarial(_CriticThenGenerator):
    """A single-score conditional critic (PatchGAN) with ``trainer.gan``'s loss: vanilla, lsgan
    or wgan-gp (gradient penalty weighted by ``config.lambda_gp``)."""

    def critic_loss(self, trainer, x, real, fake, out):
        kind = trainer.gan
        real_scores, fake_scores = trainer.critique(x, real), trainer.critique(x, fake)
        loss = adversarial.critic_loss(kind, real_scores, fake_scores)
        if kind == "wgan-gp":
            penalty = adversarial.gradient_penalty(trainer.critic, x, real, fake)
            out["wasserstein"] = float((real_scores.mean() - fake_scores.mean()).detach())
            out["gradient_penalty"] = float(penalty.detach())
            loss = loss + trainer.config.lambda_gp * penalty
        return loss

    def generator_loss(self, trainer, x, pred, real, mask, recon, out):
        adv = adversarial.generator_adversarial_loss(trainer.gan, trainer.critique(x, mask_for_critic(pred, mask)))
        out["gen_adv_loss"] = float(adv.detach())
        return recon + trainer.gan_weight * adv


class Pix2PixHDFeatureMatching(_CriticThenGenerator):
    """pix2pixHD with a ``MultiscaleDiscriminator``: the GAN loss over every scale, and the
    generator's ``reconstruction + gan_weight * (GAN + feature matching)``."""

    def __init__(self, lambda_feat: float = DEFAULT_LAMBDA_FEAT):
        self.lambda_feat = lambda_feat

    def critic_loss(self, trainer, x, real, fake, out):
        return multiscale_critic_loss(trainer.gan, trainer.critique(x, real), trainer.critique(x, fake))

    def generator_loss(self, trainer, x, pred, real, mask, recon, out):
        fake_outputs = trainer.critique(x, mask_for_critic(pred, mask))
        with torch.no_grad():
            real_outputs = trainer.critique(x, real)
        adv = multiscale_generator_loss(trainer.gan, fake_outputs)
        feat = feature_matching_loss(fake_outputs, real_outputs, self.lambda_feat)
        out["gen_adv_loss"] = float(adv.detach())
        out["feature_matching"] = float(feat.detach())
        return recon + trainer.gan_weight * (adv + feat)


def random_masks(batch: int, informative: np.ndarray, share: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """(batch, C) masks, 1 = hidden: a random share of the informative channels of each sample (at
    least one, never all of them); channels without signal are always hidden (they carry nothing)."""
    c = informative.size
    idx = np.flatnonzero(informative)
    masks = np.ones((batch, c), np.float32)
    for b in range(batch):
        masks[b, idx] = 0
        k = int(round(rng.uniform(*share) * idx.size))
        k = min(max(k, 1), max(idx.size - 1, 1))
        masks[b, rng.choice(idx, size=k, replace=False)] = 1
    return masks


class MaskedImputation:
    """Random channel masking: the batch's ``x`` and ``y`` hold the same C channels and ``mask``
    says which count (a channel counts when it has a target anywhere in the batch). In each
    sample a random share (``share``, drawn uniformly) of the counting channels is hidden
    (``random_masks``), and so is every channel that is all zeros in the sample, as at use a
    failed marker fed as zeros is. The network sees 2C channels, the channels with the hidden
    ones zeroed and then C mask planes (1 = hidden), and predicts the C channels; the loss is
    the mean absolute error over the hidden channels that count.

    ``rng`` (numpy) draws the masks; give the batch source's to keep one random stream.
    """

    def __init__(self, share: Sequence[float] = (0.15, 0.5), rng: np.random.Generator | None = None, seed: int = 0):
        self.share = tuple(float(s) for s in share)
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def step(self, trainer, batch: Batch) -> dict[str, float]:
        x, y, mask = batch
        counting = (mask.detach().flatten(2).amax(dim=2) > 0).any(dim=0).cpu().numpy()
        hidden = random_masks(x.shape[0], counting, self.share, self.rng)
        empty = x.detach().flatten(2).amax(dim=2).cpu().numpy() <= 0  # as at use: a zero marker is hidden
        hidden = torch.from_numpy(np.maximum(hidden, empty)).to(x.device)[:, :, None, None].expand_as(x)
        pred = trainer.generate(torch.cat([x * (1 - hidden), hidden], dim=1))
        scored = hidden * mask
        loss = (torch.abs(pred - y) * scored).sum() / scored.sum().clamp(min=1)
        trainer.update(trainer.optimizer, trainer.model, loss)
        return {"train_loss": float(loss.detach())}


def strategy_for(gan: str | None, critic) -> StepStrategy:
    """The built-in strategy for a run: supervised without ``gan``; pix2pixHD for a
    multi-scale critic; otherwise the single-critic GAN."""
    from ..models.pix2pixhd import MultiscaleDiscriminator

    if not gan:
        return Supervised()
    if isinstance(critic, MultiscaleDiscriminator):
        return Pix2PixHDFeatureMatching()
    return Adversarial()
