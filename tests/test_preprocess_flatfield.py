"""Flat-field correction on synthetic images with a known illumination."""

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.errors import Cancelled, InputError
from napari_virtual_stain.preprocess import correct_flatfield
from napari_virtual_stain.preprocess.flatfield import smooth

H, W = 192, 160
Y, X = np.mgrid[0:H, 0:W]


def texture(seed=0, mean=100.0, std=25.0):
    rng = np.random.default_rng(seed)
    t = ndi.gaussian_filter(rng.random((H, W)), 1.0)
    return np.clip(mean + std * (t - t.mean()) / t.std(), 1.0, None).astype(np.float32)


def vignetting():
    """1 in the centre, 0.5 in the corners."""
    r2 = ((Y - H / 2) / (H / 2)) ** 2 + ((X - W / 2) / (W / 2)) ** 2
    return (1.0 - 0.25 * r2).astype(np.float32)


def spread(a):
    """Coefficient of variation."""
    return float(np.std(a) / np.mean(a))


def test_divide_removes_multiplicative_shading_and_keeps_the_mean():
    clean = texture()
    image = clean * vignetting()
    result = correct_flatfield(image, sigma=16, mode="divide")
    # corrected / clean should be constant; the shading made it vary by ~12 %
    assert spread(image / clean) > 0.10
    assert spread(result.corrected / clean) < 0.04
    assert result.corrected.mean() == pytest.approx(image.mean(), rel=1e-4)
    # the background follows the illumination (up to a scale)
    assert np.corrcoef(result.background.ravel(), vignetting().ravel())[0, 1] > 0.95


def test_subtract_removes_an_additive_gradient_and_keeps_the_mean():
    clean = texture(seed=1)
    gradient = 40.0 * X / W + 20.0 * Y / H
    image = clean + gradient
    result = correct_flatfield(image, sigma=16, mode="subtract")
    assert np.std(image - clean) > 12.0
    assert np.std(result.corrected - clean) < 4.0
    assert result.corrected.mean() == pytest.approx(image.mean(), abs=1e-2)


def test_opening_ignores_bright_objects_that_a_gaussian_leaks_into_the_background():
    rng = np.random.default_rng(2)
    spots = np.zeros((H, W))
    spots.flat[rng.integers(0, H * W, 70)] = 1.0
    spots = ndi.gaussian_filter(spots, 2.0) * 2000.0
    true_background = 10.0 + 40.0 * X / W
    image = (spots + true_background + rng.standard_normal((H, W))).astype(np.float32)
    errors = {}
    for method in ("gaussian", "opening"):
        estimate = correct_flatfield(image, sigma=10, mode="subtract", method=method).background
        deviation = estimate - true_background
        errors[method] = float(np.std(deviation))
    assert errors["opening"] < 1.0 < errors["gaussian"]


def test_each_plane_is_corrected_on_its_own_and_input_untouched():
    clean = np.stack([texture(seed=3), 0.2 * texture(seed=4)])
    image = (clean * vignetting()).astype(np.float32)
    before = image.copy()
    result = correct_flatfield(image, sigma=16)
    assert result.corrected.shape == image.shape == result.background.shape
    for c in range(2):
        assert result.corrected[c].mean() == pytest.approx(image[c].mean(), rel=1e-4)
        assert spread(result.corrected[c] / clean[c]) < 0.04
    np.testing.assert_array_equal(image, before)


def test_integer_images_stay_in_range_and_dark_zero_planes_do_not_explode():
    image = np.zeros((2, 64, 64), np.uint16)
    image[0] = np.clip(60000 * vignetting()[:64, :64] + 5000 * texture()[:64, :64] / 100, 0, 65535)
    result = correct_flatfield(image, sigma=8, mode="subtract")
    assert result.corrected.min() >= 0 and result.corrected.max() <= 65535
    divided = correct_flatfield(image, sigma=8, mode="divide")
    assert np.isfinite(divided.corrected).all()
    assert np.all(divided.corrected[1] == 0)  # an empty channel stays empty


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.full((32, 32), 7.0), {}, "constant"),
        (np.where(np.eye(32) > 0, np.inf, 1.0), {}, "32 NaN or infinite"),
        (np.random.default_rng(0).normal(size=(32, 32)), {"mode": "divide"}, "negative values.*'subtract'"),
        (np.random.default_rng(0).random((32, 32)), {"sigma": 0}, "positive number"),
        (np.random.default_rng(0).random((32, 32)), {"mode": "ratio"}, "'divide' or 'subtract'"),
        (np.random.default_rng(0).random((32, 32)), {"method": "tophat"}, "'gaussian' or 'opening'"),
        (np.random.default_rng(0).random(32), {}, "1 axes"),
    ],
)
def test_bad_input_gives_a_clear_error(image, kwargs, message):
    with pytest.raises(InputError, match=message):
        correct_flatfield(image, **kwargs)


def test_progress_and_cancel():
    image = np.stack([texture(seed=s)[:64, :64] for s in range(3)])
    calls = []
    correct_flatfield(image, sigma=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        correct_flatfield(image, sigma=4, cancel=cancel)


def test_fast_large_sigma_blur_matches_the_direct_gaussian():
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:400, 0:500]
    illumination = 1.0 - 0.4 * ((y - 200) / 200) ** 2 - 0.3 * x / 500
    image = (illumination * (500 + 200 * rng.random((400, 500)))).astype(np.float32)
    fast = smooth(image, 40.0)  # block-averaged path (blocks of 10 pixels)
    direct = ndi.gaussian_filter(image, 40.0, mode="reflect")
    inner = (slice(80, -80), slice(80, -80))
    assert np.abs(fast - direct)[inner].max() < 0.002 * np.ptp(image)
    # at the borders the two differ in how they extend the image; against the true
    # illumination the fast path is at least as good
    truth = 600.0 * illumination
    assert np.abs(fast - truth).mean() <= 1.05 * np.abs(direct - truth).mean()
