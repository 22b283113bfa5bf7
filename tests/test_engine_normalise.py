"""Input normalisation (whole-image statistics) and output mapping."""

import json

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_virtual_stain.engine import normalise as norm_module
from napari_virtual_stain.engine.normalise import compute_stats, normalise, output_to_display, strided_sample
from napari_virtual_stain.errors import InputError

PERCENTILE = {"kind": "percentile", "low": 1.0, "high": 99.0}


def test_percentile_stats_ignore_nan_and_inf_and_are_json():
    rng = np.random.default_rng(1)
    clean = rng.gamma(2.0, 10.0, size=(1, 64, 64)).astype(np.float32)
    dirty = clean.copy()
    dirty[0, :8, :8] = np.nan
    dirty[0, 10, 10] = np.inf
    stats = compute_stats(dirty, PERCENTILE)
    finite = dirty[np.isfinite(dirty)]
    expected = np.percentile(finite, [1.0, 99.0])
    np.testing.assert_allclose([stats["low"][0], stats["high"][0]], expected, rtol=1e-6)
    assert json.loads(json.dumps(stats)) == stats


def test_normalise_maps_percentiles_to_zero_and_one_per_channel():
    rng = np.random.default_rng(2)
    image = np.stack([rng.normal(100, 10, (50, 50)), rng.normal(5, 1, (50, 50))]).astype(np.float32)
    stats = compute_stats(image, PERCENTILE)
    y = normalise(image, PERCENTILE, stats)
    assert y.dtype == np.float32 and y.shape == image.shape
    for c in range(2):
        lo, hi = np.percentile(y[c], [1.0, 99.0])
        assert lo == pytest.approx(0.0, abs=1e-5) and hi == pytest.approx(1.0, abs=1e-5)
    # A tile normalised alone uses the whole image's statistics, so it equals the same crop.
    np.testing.assert_array_equal(normalise(image[:, 10:20, 5:30], PERCENTILE, stats), y[:, 10:20, 5:30])


def test_nan_becomes_zero_after_normalisation_and_constant_channel_gives_zeros():
    image = np.ones((2, 20, 20), np.float32) * 7
    image[1] = np.linspace(0, 1, 400).reshape(20, 20)
    image[1, 3, 3] = np.nan
    stats = compute_stats(image, PERCENTILE)
    y = normalise(image, PERCENTILE, stats)
    assert np.isfinite(y).all()
    assert (y[0] == 0).all()  # constant channel: no division by zero
    assert y[1, 3, 3] == 0
    assert y[1].max() > 0.9


def test_all_nan_channel_gives_zeros():
    image = np.full((1, 8, 8), np.nan, np.float32)
    stats = compute_stats(image, PERCENTILE)
    assert stats["low"] == [0.0] and stats["high"] == [0.0]
    assert (normalise(image, PERCENTILE, stats) == 0).all()


def test_range_to_minus_one_one_with_clip_and_none_passthrough():
    spec = {"kind": "range", "min": 0, "max": 255, "to": [-1, 1], "clip": True}
    image = np.array([[[0, 127.5, 255, 300]]], np.float32)
    y = normalise(image, spec, compute_stats(image, spec))
    np.testing.assert_allclose(y, [[[-1, 0, 1, 1]]], atol=1e-6)
    raw = np.array([[[3, -2]]], np.int16)
    spec_none = {"kind": "none"}
    y = normalise(raw, spec_none, compute_stats(raw, spec_none))
    assert y.dtype == np.float32 and (y == raw).all()


def test_per_channel_range():
    spec = {"kind": "range", "min": [0, 10], "max": [10, 20]}
    image = np.array([[[5.0]], [[15.0]]], np.float32)
    np.testing.assert_allclose(normalise(image, spec, compute_stats(image, spec)), 0.5)


def test_unknown_kind_and_bad_percentiles_raise_input_error():
    with pytest.raises(InputError, match="unknown"):
        compute_stats(np.zeros((1, 2, 2)), {"kind": "zscore"})
    with pytest.raises(InputError, match="percentiles"):
        compute_stats(np.zeros((1, 2, 2)), {"kind": "percentile", "low": 99, "high": 1})


def test_subsampled_stats_of_large_dask_array_are_close_to_exact(monkeypatch):
    # Shrink the sample budget so a small array takes the subsampling path (stride > 1).
    monkeypatch.setattr(norm_module, "MAX_SAMPLES_PER_CHANNEL", 50_000)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:600, :600]
    smooth = np.sin(yy / 37.0) * np.cos(xx / 53.0) * 100 + 200
    image = np.stack([smooth + rng.normal(0, 5, smooth.shape), rng.gamma(1.5, 20, smooth.shape)]).astype(np.float32)
    lazy = da.from_array(image, chunks=(1, 128, 128))
    assert strided_sample(lazy).shape[1:] == (200, 200)  # really subsampled (stride 3)
    approx = compute_stats(lazy, PERCENTILE)
    exact = np.percentile(image.reshape(2, -1), [1.0, 99.0], axis=1)
    for c in range(2):
        span = exact[1, c] - exact[0, c]
        assert abs(approx["low"][c] - exact[0, c]) < 0.02 * span
        assert abs(approx["high"][c] - exact[1, c]) < 0.02 * span


def test_zarr_input_gives_same_stats_as_numpy():
    image = np.random.default_rng(4).random((2, 3, 40, 40)).astype(np.float32)
    z = zarr.zeros(image.shape, chunks=(1, 1, 16, 16), dtype="f4")
    z[:] = image
    assert compute_stats(z, PERCENTILE) == compute_stats(image, PERCENTILE)


def test_output_to_display():
    y = np.array([-1.0, 0.0, 1.0], np.float32)
    np.testing.assert_array_equal(output_to_display(y, "tanh"), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(output_to_display(y, "none"), y)
    np.testing.assert_array_equal(output_to_display(y, "sigmoid"), y)
    with pytest.raises(InputError):
        output_to_display(y, "relu")
