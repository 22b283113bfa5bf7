"""GAN pieces: gradient penalty, losses, masked critic input, critic sizes; LR schedules."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_virtual_stain.training import adversarial
from napari_virtual_stain.training.schedules import EarlyStopping, lr_factor


class LinearCritic(nn.Module):
    """D(x, y) = <w_x, x> + <w_y, y>: its gradient with respect to y is w_y everywhere."""

    def __init__(self, shape_x, shape_y, norm_y: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wx = torch.randn(shape_x, generator=g)
        wy = torch.randn(shape_y, generator=g)
        self.wy = wy / wy.norm() * norm_y
        self.cx = shape_x[0]

    def forward(self, xy):
        x, y = xy[:, :self.cx], xy[:, self.cx:]
        return ((x * self.wx).flatten(1).sum(1) + (y * self.wy).flatten(1).sum(1))[:, None]


@pytest.mark.parametrize("norm, expected", [(1.0, 0.0), (3.0, 4.0)])
def test_gradient_penalty_of_a_linear_critic(norm, expected):
    x = torch.rand(4, 1, 8, 8)
    real, fake = torch.rand(4, 2, 8, 8), torch.rand(4, 2, 8, 8)
    critic = LinearCritic((1, 8, 8), (2, 8, 8), norm)
    gp = adversarial.gradient_penalty(critic, x, real, fake)
    assert torch.isfinite(gp)
    assert float(gp) == pytest.approx(expected, abs=1e-5)


def test_gradient_penalty_is_differentiable_for_a_patch_critic_in_3d():
    critic = adversarial.make_critic(1, 2, 3, (8, 16, 16), "wgan-gp", ndf=4)
    x, real, fake = torch.rand(2, 1, 8, 16, 16), torch.rand(2, 2, 8, 16, 16), torch.rand(2, 2, 8, 16, 16)
    gp = adversarial.gradient_penalty(critic, x, real, fake)
    gp.backward()
    grads = [p.grad for p in critic.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_gan_losses_known_values():
    zeros = torch.zeros(3, 1, 4, 4)
    # Logits of 0 mean p = 0.5 for both: BCE = log 2 on each side.
    assert float(adversarial.critic_loss("vanilla", zeros, zeros)) == pytest.approx(math.log(2))
    assert float(adversarial.generator_adversarial_loss("vanilla", zeros)) == pytest.approx(math.log(2))
    assert float(adversarial.critic_loss("lsgan", torch.ones_like(zeros), zeros)) == 0.0
    assert float(adversarial.generator_adversarial_loss("lsgan", zeros)) == 1.0
    assert float(adversarial.critic_loss("wgan-gp", zeros + 2, zeros + 0.5)) == pytest.approx(-1.5)
    assert float(adversarial.generator_adversarial_loss("wgan-gp", zeros + 0.5)) == pytest.approx(-0.5)


def test_critic_sees_missing_places_empty():
    y = torch.rand(1, 2, 4, 4)
    mask = torch.ones_like(y)
    mask[0, 1] = 0
    out = adversarial.mask_for_critic(y, mask)
    assert torch.equal(out[0, 0], y[0, 0]) and (out[0, 1] == 0).all()


@pytest.mark.parametrize("patch, dims", [((16, 16), 2), ((64, 64), 2), ((8, 32, 32), 3), ((6, 24, 24), 3)])
def test_critic_output_is_never_empty(patch, dims):
    critic = adversarial.make_critic(1, 2, dims, patch, "lsgan", ndf=4)
    out = critic(torch.rand((1, 3) + patch))
    assert out.shape[:2] == (1, 1) and min(out.shape[2:]) >= 1


def test_constant_then_linear_schedule():
    assert lr_factor("constant", 0.9) == 1.0
    assert lr_factor("constant_then_linear", 0.25, 0.5) == 1.0
    assert lr_factor("constant_then_linear", 0.75, 0.5) == pytest.approx(0.5)
    assert lr_factor("constant_then_linear", 1.0, 0.5) == 0.0
    with pytest.raises(ValueError):
        lr_factor("cosine", 0.5)


def test_early_stopping_counts_validations_without_improvement():
    stop = EarlyStopping(patience=2)
    assert stop.update(1.0, 10) == (True, False)
    assert stop.update(1.1, 20) == (False, False)
    assert stop.update(0.9, 30) == (True, False)
    assert stop.update(0.95, 40) == (False, False)
    assert stop.update(0.95, 50) == (False, True)
    assert (stop.best, stop.best_step) == (0.9, 30)


def test_the_pix2pixhd_step_skips_non_finite_updates_like_every_other_step():
    """The multi-scale (pix2pixHD) strategy goes through the Trainer's guard too."""
    from napari_virtual_stain.models.factory import build_model
    from napari_virtual_stain.training.trainer import TrainConfig, Trainer

    from conftest import tiny_unet_card

    rng = np.random.default_rng(0)
    x = rng.random((1, 64, 64), dtype=np.float32)
    y = np.concatenate([x, 1 - x])
    card = tiny_unet_card()
    trainer = Trainer(build_model(card.architecture, card.arch_args), card, [x], [y],
                      TrainConfig(patch=(32, 32), batch_size=2, steps=1, gan="lsgan", critic="multiscale",
                                  device="cpu", val_fraction=0.0))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_loss = trainer.loss_fn
    trainer.loss_fn = lambda pred, target, mask: real_loss(pred, target, mask) * float("nan")
    out = trainer.train_step()
    assert out["skipped"] and math.isnan(out["train_loss"])
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, before[key])  # nothing was applied
