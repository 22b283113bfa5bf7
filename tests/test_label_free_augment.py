"""Label-free augmentation and the LabelFreeTrainer's batches: shapes, alignment, ranges, polarity."""

import numpy as np
import pytest
import torch

from napari_virtual_stain.training.label_free_augment import LabelFreeJitter, jitter_label_free, scaled_crop
from napari_virtual_stain.training.label_free_trainer import LabelFreeTrainer
from napari_virtual_stain.training.starting import model_for_training
from napari_virtual_stain.training.trainer import TrainConfig


def _blobs(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.zeros(shape, np.float32)
    for cy, cx in rng.uniform(10, min(shape) - 10, (6, 2)):
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
    return image / image.max()


NO_JITTER = LabelFreeJitter(invert_probability=0, gamma=(1, 1), halo_probability=0, blur_probability=0,
                            shading_probability=0, noise_sigma=(0, 0))


def test_jitter_keeps_range_and_leaves_input_alone():
    x = _blobs()[None]
    before = x.copy()
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = jitter_label_free(x, rng)
        assert out.shape == x.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(x, before)


def test_inversion_flips_the_contrast_and_nothing_else_changes_without_jitter():
    x = _blobs()[None]
    same = jitter_label_free(x, np.random.default_rng(0), NO_JITTER)
    np.testing.assert_allclose(same, x, atol=1e-6)
    inverted = jitter_label_free(x, np.random.default_rng(0), LabelFreeJitter(**{**NO_JITTER.__dict__, "invert_probability": 1.0}))
    assert np.corrcoef(inverted.ravel(), x.ravel())[0, 1] == pytest.approx(-1.0, abs=1e-5)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_scaled_crop_resamples_input_and_target_alike(scale):
    image = _blobs((128, 128))
    x, y, mask = image[None], image[None] * 3, np.ones((1, 128, 128), np.float32)
    cx, cy, cm = scaled_crop(x, y, mask, (48, 48), scale, np.random.default_rng(2))
    assert cx.shape == cy.shape == cm.shape == (1, 48, 48)
    np.testing.assert_allclose(cy, cx * 3, rtol=1e-4, atol=1e-5)  # same window, same resampling
    assert set(np.unique(cm)) == {1.0}
    # a zoom-out (scale 0.5) shows a window twice as wide: the blobs look half as wide
    if scale == 0.5:
        assert (cx > 0.5).mean() < (image > 0.5).mean()


def test_label_free_trainer_batches_follow_the_pair_weights():
    bright = _blobs((96, 96), seed=3)
    inputs = [bright[None], (1 - bright)[None] * 10]
    # The first pair's target is missing (NaN: mask 0), the second's is there (mask 1).
    targets = [np.full((1, 96, 96), np.nan, np.float32), bright[None] * 100]
    model, card = model_for_training(arch="unet", n_in=1, n_out=1, arch_args={"depth": 2, "base": 4})
    cfg = TrainConfig(patch=(32, 32), batch_size=16, steps=1, val_fraction=0.15, seed=0, device="cpu")
    for weights, expected in (([0.0, 1.0], 1.0), ([1.0, 0.0], 0.0)):
        trainer = LabelFreeTrainer(model, card, inputs, targets, cfg, pair_weights=weights)
        x, y, mask = trainer.next_batch()
        assert x.shape == y.shape == mask.shape == (16, 1, 32, 32)
        assert torch.all(mask == expected)
    with pytest.raises(ValueError):
        LabelFreeTrainer(model, card, inputs, targets, cfg, pair_weights=[1.0])
