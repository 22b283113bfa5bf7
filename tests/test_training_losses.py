"""Masked reconstruction losses: perfect predictions, masks, NaNs, known values."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_virtual_stain import metrics
from napari_virtual_stain.training.losses import LOSS_NAMES, make_loss, masked_l1, masked_l2


def _data(shape=(2, 2, 24, 24), seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g)
    pred = (0.6 * target + 0.4 * torch.rand(shape, generator=g)).requires_grad_(True)
    mask = torch.ones(shape)
    if shape[0] > 1 and shape[1] > 1:
        mask[0, 1] = 0  # a channel missing for one sample
        mask[1, 0, :8] = 0  # missing pixels
    return pred, target, mask


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_perfect_prediction_gives_zero(name):
    _, target, mask = _data()
    assert float(make_loss(name, 0.5)(target.clone(), target, mask)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_pixels_under_the_mask_change_nothing(name):
    pred, target, mask = _data()
    loss = make_loss(name, 0.5)
    base = float(loss(pred, target, mask).detach())
    changed_pred = torch.where(mask > 0, pred, torch.full_like(pred, 7.0))
    changed_target = torch.where(mask > 0, target, torch.full_like(target, float("nan")))
    with torch.no_grad():
        assert float(loss(changed_pred, target, mask)) == pytest.approx(base, rel=1e-6)
        # The mask matters: without it the loss differs.
        assert float(loss(changed_pred, target, torch.ones_like(mask))) != pytest.approx(base, rel=1e-3)
    value = loss(pred, changed_target, mask)
    assert float(value.detach()) == pytest.approx(base, rel=1e-6)
    value.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[mask == 0] == 0).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_no_valid_pixel_gives_zero_not_nan(name):
    pred, target, _ = _data()
    value = make_loss(name, 0.5)(pred, target, torch.zeros_like(target))
    assert float(value.detach()) == 0.0
    value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_known_values_and_mixing():
    pred, target, mask = _data()
    pred = pred.detach()
    valid = mask > 0
    l1 = (pred - target).abs()[valid].mean()
    l2 = ((pred - target) ** 2)[valid].mean()
    assert float(masked_l1(pred, target, mask)) == pytest.approx(float(l1), rel=1e-6)
    assert float(masked_l2(pred, target, mask)) == pytest.approx(float(l2), rel=1e-6)
    assert float(make_loss("l1_l2", 0.3)(pred, target, mask)) == pytest.approx(float(0.3 * l1 + 0.7 * l2), rel=1e-6)
    full = torch.ones_like(mask)
    assert float(make_loss("smooth_l1")(pred, target, full)) == pytest.approx(float(F.smooth_l1_loss(pred, target)), rel=1e-6)


def test_ssim_part_agrees_with_the_metric():
    pred, target, _ = _data(shape=(1, 1, 40, 40))
    pred = pred.detach()
    full = torch.ones_like(target)
    only_ssim = float(make_loss("ssim_l1", 1.0)(pred, target, full))
    expected = 1.0 - metrics.ssim(pred.detach().numpy()[0, 0], target.numpy()[0, 0])
    assert only_ssim == pytest.approx(expected, abs=1e-5)


def test_ssim_loss_works_on_thin_3d_patches():
    pred, target, mask = _data(shape=(2, 1, 4, 20, 20))
    mask[1, 0, :, :6] = 0
    value = float(make_loss("ssim_l1", 0.8)(pred, target, mask).detach())
    assert np.isfinite(value) and value > 0


def test_unknown_loss_and_bad_alpha_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("l3")
    with pytest.raises(ValueError, match="alpha"):
        make_loss("l1_l2", 1.5)
