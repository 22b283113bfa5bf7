"""Step strategies: the built-ins reproduce the pre-refactor steps bit for bit, a custom one is
used, and every strategy's steps go through the one non-finite guard."""

import math

import numpy as np
import pytest
import torch

from conftest import tiny_unet_card
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.training import adversarial
from napari_virtual_stain.training.strategies import (Adversarial, Pix2PixHDFeatureMatching, StepStrategy,
                                                      Supervised)
from napari_virtual_stain.training.trainer import TrainConfig, Trainer


def _pair():
    rng = np.random.default_rng(0)
    x = rng.random((1, 48, 48), dtype=np.float32)
    return x, np.concatenate([x, 1 - x])


def _trainer(strategy=None, **kw):
    x, y = _pair()
    card = tiny_unet_card()  # no normalisation layers: a skipped step leaves the whole state as it was
    torch.manual_seed(0)
    model = build_model(card.architecture, card.arch_args)
    config = dict(patch=(32, 32), batch_size=2, steps=3, lr=1e-2, val_fraction=0.0, critic_width=4, device="cpu")
    config.update(kw)
    return Trainer(model, card, [x], [y], TrainConfig(**config), strategy=strategy)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ---- the steps as they were written inside the Trainer before strategies (the reference) ----------


def _reference_supervised_step(t):
    x, y, mask = t.next_batch()
    loss = t.loss_fn(t.generate(x), y, mask)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()


def _reference_gan_step(t):
    kind = t.gan
    t.critic.train()
    t.critic.requires_grad_(True)
    for _ in range(t.n_critic):
        x, y, mask = t.next_batch()
        with torch.no_grad():
            fake = adversarial.mask_for_critic(t.generate(x), mask)
        real = adversarial.mask_for_critic(y, mask)
        real_scores = t.critic(torch.cat([x, real], 1)).float()
        fake_scores = t.critic(torch.cat([x, fake], 1)).float()
        loss = adversarial.critic_loss(kind, real_scores, fake_scores)
        if kind == "wgan-gp":
            loss = loss + t.config.lambda_gp * adversarial.gradient_penalty(t.critic, x, real, fake)
        t.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.critic_optimizer.step()
    t.critic.requires_grad_(False)
    pred = t.generate(x)
    scores = t.critic(torch.cat([x, adversarial.mask_for_critic(pred, mask)], 1)).float()
    loss = t.loss_fn(pred, y, mask) + t.gan_weight * adversarial.generator_adversarial_loss(kind, scores)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    t.critic.requires_grad_(True)


@pytest.mark.parametrize("gan", [None, "lsgan", "wgan-gp"])
def test_a_seeded_run_gives_the_same_weights_as_the_pre_refactor_step(gan):
    kw = dict(gan=gan, n_critic=2) if gan else {}
    trained = _trainer(**kw)
    assert isinstance(trained.strategy, Adversarial if gan else Supervised)  # chosen from the config
    trained.run()  # constructed and run before the reference: both start from the same RNG state
    reference = _trainer(**kw)
    reference.model.train()
    initial = _state(reference.model)
    for _ in range(3):
        (_reference_gan_step if gan else _reference_supervised_step)(reference)
    assert _same(_state(trained.model), _state(reference.model))
    assert not _same(_state(trained.model), initial)  # it did train
    if gan:
        assert _same(_state(trained.critic), _state(reference.critic))


def test_a_custom_strategy_is_used_and_its_losses_recorded():
    class ShrinkOutput:  # trains the prediction towards zero, whatever the target
        calls = 0

        def step(self, trainer, batch):
            self.calls += 1
            x, _, _ = batch
            loss = trainer.generate(x).mean()
            trainer.update(trainer.optimizer, trainer.model, loss)
            return {"train_loss": float(loss.detach()), "custom": 1.0}

    strategy = ShrinkOutput()
    assert isinstance(strategy, StepStrategy)
    trainer = _trainer(strategy=strategy, steps=6)
    result = trainer.run()
    assert strategy.calls == 6 and trainer.skipped_steps == 0
    losses = [loss for _, loss in result.history["train"]]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the recorded loss is the custom one, and it fell


class _NanLoss:
    """Wraps a strategy so that its generator's loss is not finite."""

    def __init__(self, inner):
        self.inner = inner

    def step(self, trainer, batch):
        real = trainer.loss_fn
        trainer.loss_fn = lambda pred, target, mask: real(pred, target, mask) * float("nan")
        try:
            return self.inner.step(trainer, batch)
        finally:
            trainer.loss_fn = real


class _CustomNan:
    def step(self, trainer, batch):
        x, _, _ = batch
        loss = trainer.generate(x).mean() * float("nan")
        trainer.update(trainer.optimizer, trainer.model, loss)
        return {"train_loss": float(loss.detach())}


class _NeverUpdates:
    """Reports a finite loss but never updates the generator: the step did not happen."""

    def step(self, trainer, batch):
        return {"train_loss": 0.5}


@pytest.mark.parametrize("make, kw", [
    (lambda: _NanLoss(Supervised()), {}),
    (lambda: _NanLoss(Adversarial()), dict(gan="lsgan")),
    (lambda: _NanLoss(Adversarial()), dict(gan="wgan-gp", n_critic=2)),
    (lambda: _NanLoss(Pix2PixHDFeatureMatching()), dict(gan="lsgan", critic="multiscale")),
    (_CustomNan, {}),
    (_NeverUpdates, {}),
], ids=["supervised", "lsgan", "wgan-gp", "pix2pixhd", "custom-nan", "custom-no-update"])
def test_the_non_finite_guard_applies_to_every_strategy(make, kw):
    trainer = _trainer(strategy=make(), steps=2, **kw)
    before = _state(trainer.model)
    updates = []
    result = trainer.run(on_update=updates.append)
    assert _same(_state(trainer.model), before)  # nothing was applied to the generator
    assert [u.skipped for u in updates] == [True, True]
    assert trainer.skipped_steps == 2 and result.card.training["skipped_steps"] == 2
    if not isinstance(trainer.strategy, _NeverUpdates):
        assert result.history["train"] == [] and all(math.isnan(u.train_loss) for u in updates)
