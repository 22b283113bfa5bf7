"""Image metrics: agreement with skimage, perfect scores, masks, known values."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from napari_virtual_stain import metrics


def _pair(rng, shape):
    target = rng.random(shape)
    pred = 0.7 * target + 0.3 * rng.random(shape)
    return pred, target


@pytest.mark.parametrize("shape", [(40, 50), (12, 30, 30)])
def test_ssim_matches_skimage_without_mask(rng, shape):
    pred, target = _pair(rng, shape)
    expected = structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0)
    assert metrics.ssim(pred, target) == pytest.approx(expected, abs=1e-12)


def test_perfect_prediction_scores(rng):
    target = rng.random((32, 32))
    assert metrics.ssim(target, target) == pytest.approx(1.0)
    assert metrics.psnr(target, target) == float("inf")
    assert metrics.pcc(target, target) == pytest.approx(1.0)
    assert metrics.mae(target, target) == 0.0
    assert metrics.mse(target, target) == 0.0


def test_known_values():
    target = np.linspace(0, 1, 100).reshape(10, 10)
    pred = target + 0.1
    assert metrics.mae(pred, target) == pytest.approx(0.1)
    assert metrics.mse(pred, target) == pytest.approx(0.01)
    assert metrics.psnr(pred, target) == pytest.approx(20.0)
    assert metrics.pcc(pred, target) == pytest.approx(1.0)
    assert metrics.pcc(1 - target, target) == pytest.approx(-1.0)
    assert np.isnan(metrics.pcc(np.ones((10, 10)), target))


def test_pixels_outside_the_mask_change_nothing(rng):
    pred, target = _pair(rng, (40, 40))
    mask = np.zeros((40, 40), bool)
    mask[5:30, 8:35] = True
    changed = pred.copy()
    changed[~mask] = rng.random((~mask).sum()) * 10
    target_changed = target.copy()
    target_changed[~mask] = np.nan
    for name, fn in metrics.METRICS.items():
        a = fn(pred, target, mask)
        assert fn(changed, target, mask) == pytest.approx(a), name
        assert fn(pred, target_changed, mask) == pytest.approx(a), name
    # ... and the mask matters: scoring everything gives another value.
    assert metrics.mae(changed, target) != pytest.approx(metrics.mae(changed, target, mask))


def test_nan_target_pixels_count_as_missing(rng):
    pred, target = _pair(rng, (20, 20))
    with_nan = target.copy()
    with_nan[:5] = np.nan
    mask = np.ones((20, 20), bool)
    mask[:5] = False
    assert metrics.mae(pred, with_nan) == pytest.approx(metrics.mae(pred, target, mask))


def test_channel_scores_leave_out_channels_without_data(rng):
    pred, target = _pair(rng, (2, 24, 24))
    target[1] = np.nan
    scores = metrics.channel_scores(pred, target, names=["nuclei", "membrane"])
    assert list(scores) == ["nuclei"]
    assert set(scores["nuclei"]) == {"ssim", "psnr", "pcc", "mae"}
    assert scores["nuclei"]["mae"] == pytest.approx(metrics.mae(pred[0], target[0]))


def test_tiled_scores_pool_pixels_and_average_ssim_per_tile(rng):
    pred, target = _pair(rng, (3, 1, 24, 24))
    scores = metrics.tiled_channel_scores(pred, target, names=["x"])["x"]
    assert scores["pcc"] == pytest.approx(metrics.pcc(pred.ravel(), target.ravel()))
    assert scores["mae"] == pytest.approx(np.abs(pred - target).mean())
    per_tile = [metrics.ssim(pred[i, 0], target[i, 0]) for i in range(3)]
    assert scores["ssim"] == pytest.approx(np.mean(per_tile))
    assert metrics.mean_scores({"a": {"pcc": 0.5}, "b": {"pcc": 1.0}}) == {"pcc": 0.75}


def test_tiled_scores_accept_tiles_of_different_shapes(rng):
    preds = [rng.random((1, 20, 24)), rng.random((1, 12, 24))]
    targets = [p + 0.05 for p in preds]
    masks = [np.ones_like(p, bool) for p in preds]
    masks[1][0, :6] = False
    scores = metrics.tiled_channel_scores(preds, targets, masks)["channel 0"]
    assert scores["mae"] == pytest.approx(0.05)
    assert scores["psnr"] == pytest.approx(10 * np.log10(1 / 0.0025))
