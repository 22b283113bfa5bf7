"""Step strategies: the built-ins reproduce the pre-refactor steps bit for bit, a custom one is
used, and every strategy's steps go through the one non-finite guard."""

import math

import numpy as np
import pytest
import torch

from conftest import tiny_unet_card
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.training import adversarial
from napari_virtual_stain.training.strategies import (Adversarial, MaskedImputation, Pix2PixHDFeatureMatching,
                                                      StepStrategy, Supervised)
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


# ---- masked imputation (random channel masking) from a batch source -------------------------------


def _imputation_trainer(stack, informative, steps=3, model=None, seed=0):
    from napari_virtual_stain.training.batch_sources import StackPatches

    card = tiny_unet_card(n_in=2 * len(stack), outputs=tuple("ABC"[:len(stack)]))
    torch.manual_seed(0)
    model = model if model is not None else build_model(card.architecture, card.arch_args)
    rng = np.random.default_rng(seed)
    config = TrainConfig(patch=(32, 32), batch_size=4, steps=steps, lr=1e-2, val_fraction=0.0, device="cpu")
    return Trainer(model, card, (), (), config, strategy=MaskedImputation((0.3, 0.7), rng=rng),
                   batches=StackPatches(stack, 40, 32, np.asarray(informative), rng=rng))


def test_masked_imputation_hides_channels_and_scores_only_the_hidden_ones():
    seen = []

    class Spy(torch.nn.Module):  # a tiny network that remembers what it was given and what it said
        size_multiple = 1

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(6, 3, 1)

        def forward(self, x):
            out = torch.sigmoid(self.conv(x))
            seen.append((x.detach().clone(), out.detach().clone()))
            return out

    levels = torch.tensor([0.3, 0.6, 0.9])  # constant channels: the targets are known whatever the crop
    stack = np.broadcast_to(levels.numpy()[:, None, None], (3, 48, 48)).astype(np.float32)
    trainer = _imputation_trainer(stack, [True, True, False], steps=4, model=Spy())
    result = trainer.run()
    assert trainer.skipped_steps == 0 and len(seen) == 4
    for (x, pred), (_, loss) in zip(seen, result.history["train"]):
        values, planes = x[:, :3], x[:, 3:]
        hidden = planes[:, :, 0, 0]
        assert torch.all(planes == hidden[:, :, None, None])  # one flag per channel and sample
        assert torch.all(hidden[:, 2] == 1)  # the channel without a target is always hidden
        assert torch.all(hidden[:, :2].sum(dim=1) == 1)  # of two counting channels one is hidden, never both
        shown = (1 - hidden)[:, :, None, None] * levels[None, :, None, None]
        assert torch.equal(values, shown.expand_as(values))  # hidden channels zeroed, the others as they are
        # the loss: mean absolute error against the input itself, over the hidden channels that count only
        error = (pred - levels[None, :, None, None]).abs().mean(dim=(2, 3))[:, :2]
        assert loss == pytest.approx(float(error[hidden[:, :2].bool()].mean()), rel=1e-5)


def test_the_non_finite_guard_applies_to_masked_imputation():
    """A NaN batch is skipped, not applied; NaN batches in a row end the run as diverged."""
    from napari_virtual_stain.errors import InputError

    stack = np.full((3, 48, 48), np.nan, np.float32)
    trainer = _imputation_trainer(stack, [True, True, True], steps=3)
    before = _state(trainer.model)
    updates = []
    result = trainer.run(on_update=lambda u: updates.append(u.skipped))
    assert _same(_state(trainer.model), before) and updates == [True, True, True]
    assert trainer.skipped_steps == 3 and result.history["train"] == []
    with pytest.raises(InputError, match="diverged"):
        _imputation_trainer(stack, [True, True, True], steps=20).run()

