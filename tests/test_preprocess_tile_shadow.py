"""Tile-shadow correction (paper 000) on synthetic mosaics with a known shadow."""

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.errors import Cancelled, InputError
from napari_virtual_stain.preprocess import (
    cast_like,
    correct_tile_shadow,
    estimate_artifact,
    pick_empty_tiles,
    subtract_artifact,
)
from napari_virtual_stain.preprocess._common import channels_first, channels_last

TILE = (32, 40)
SHAPE = (160, 230)  # 5 full tile rows; 5 full tile columns + a partial one of 30 pixels
NOISE = 2.0


def shadow(amp=30.0):
    """A zero-mean shadow: a dark band along the top and darkening towards the right."""
    y, x = np.mgrid[0 : TILE[0], 0 : TILE[1]]
    s = -amp * np.exp(-((y - 4) ** 2) / 20.0) - 0.5 * amp * (x / TILE[1]) ** 2
    return (s - s.mean()).astype(np.float32)


def on_grid(tile_image, shape=SHAPE):
    reps = (-(-shape[0] // tile_image.shape[0]), -(-shape[1] // tile_image.shape[1]))
    return np.tile(tile_image, reps)[: shape[0], : shape[1]]


def clean_image(seed=0, background=100.0, contrast=40.0):
    """Flat background with noise; textured tissue only in rows >= 64 and columns < 120."""
    rng = np.random.default_rng(seed)
    image = background + NOISE * rng.standard_normal(SHAPE)
    texture = ndi.gaussian_filter(rng.random(SHAPE), 2)
    tissue = np.zeros(SHAPE)
    tissue[64:, :120] = 1
    image += tissue * (contrast + 30 * (texture - texture.mean()) / texture.std())
    return image.astype(np.float32)


def tissue_free(tiles):
    """True if every (row, col) tile lies outside the tissue block."""
    return all(r * TILE[0] + TILE[0] <= 64 or c * TILE[1] >= 120 for r, c in tiles)


def rms(a):
    return float(np.sqrt(np.mean((a - a.mean()) ** 2)))


def test_recovers_clean_image_including_partial_edge_tiles():
    clean = clean_image()
    image = clean + on_grid(shadow())
    result = correct_tile_shadow(image, TILE, n_empty=4)
    error = result.corrected - clean
    # The estimate is the mean of 4 noisy tiles, so the residual is about NOISE / 2.
    assert rms(image - clean) > 10.0
    assert rms(error) < 1.5
    assert abs(error.mean()) < 0.5  # background level kept (only the pattern removed)
    assert rms(error[:, 200:]) < 1.5  # the partial last column of tiles, corrected with a cropped artifact
    assert result.corrected.dtype == np.float32 and result.corrected.shape == SHAPE
    assert result.artifact.shape == TILE
    assert tissue_free(result.tiles) and len(result.tiles) == 4


def test_emptiest_tile_criteria():
    image = clean_image() + on_grid(shadow())
    assert tissue_free(pick_empty_tiles(image, TILE, n_empty=5, criterion="flat"))
    assert tissue_free(pick_empty_tiles(image, TILE, n_empty=5, criterion="dark"))  # tissue is brighter
    bright_first = pick_empty_tiles(image, TILE, n_empty=5, criterion="bright")
    assert not any(tissue_free([t]) for t in bright_first)  # bright = tissue here
    # fraction: 10 % of the 25 complete tiles, rounded
    assert len(pick_empty_tiles(image, TILE, fraction=0.1)) == 2


def test_explicit_tiles_are_averaged_exactly():
    image = clean_image(seed=3) + on_grid(shadow())
    tiles = [(0, 2), (1, 4)]
    expected = (image[0:32, 80:120] + image[32:64, 160:200]) / 2
    np.testing.assert_allclose(estimate_artifact(image, TILE, tiles), expected, rtol=1e-6)
    result = correct_tile_shadow(image, TILE, tiles=tiles)
    assert result.tiles == tiles
    np.testing.assert_allclose(result.artifact, expected, rtol=1e-6)


def test_multichannel_gets_one_artifact_per_channel():
    clean = np.stack([clean_image(seed=1), 0.5 * clean_image(seed=2, background=50)])
    shadows = np.stack([shadow(30.0), -shadow(10.0)])  # a different shadow in each channel
    image = clean + np.stack([on_grid(s) for s in shadows])
    result = correct_tile_shadow(image, TILE, n_empty=4)
    assert result.artifact.shape == (2,) + TILE
    for c in range(2):
        pattern = result.artifact[c] - result.artifact[c].mean()
        assert np.abs(pattern - shadows[c]).max() < 4.0
        assert rms(result.corrected[c] - clean[c]) < 1.5


def test_rgb_uint8_round_trip_clips_and_keeps_dtype():
    grey = clean_image(background=120.0, contrast=60.0)
    rgb = np.stack([grey, 0.8 * grey, 0.6 * grey], axis=-1)  # (Y, X, 3)
    shadowed = rgb + on_grid(shadow(40.0))[..., None]
    image = np.clip(np.rint(shadowed), 0, 255).astype(np.uint8)
    before = image.copy()
    result = correct_tile_shadow(channels_first(image, rgb=True), TILE, n_empty=4)
    out = cast_like(channels_last(result.corrected, rgb=True), image.dtype)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert result.artifact.shape == (3,) + TILE
    assert rms(out.astype(float)[..., 1] - 0.8 * grey) < 2.0 < rms(image.astype(float)[..., 1] - 0.8 * grey)
    np.testing.assert_array_equal(image, before)  # input untouched


def test_remove_background_takes_empty_tiles_to_zero_and_clips_at_zero():
    rng = np.random.default_rng(4)
    clean = np.zeros(SHAPE, np.float32)
    clean[64:, :120] = 50 + 10 * rng.random((96, 120))
    artifact = 20.0 + shadow(15.0)  # an additive glow, positive everywhere
    image = clean + on_grid(artifact)
    result = correct_tile_shadow(image, TILE, n_empty=6, criterion="dark", remove_background=True)
    np.testing.assert_allclose(result.corrected, clean, atol=1e-3)
    # subtracting more than there is clips at 0 for a non-negative image
    clipped = subtract_artifact(image, np.full(TILE, 1000.0, np.float32), remove_background=True)
    assert clipped.min() == 0.0 and clipped.max() == 0.0


def test_integer_result_is_clipped_to_the_dtype_range():
    image = np.full(SHAPE, 250, np.uint8)
    image[::7, ::5] = 10
    corrected = subtract_artifact(image, -on_grid(shadow(30.0))[:32, :40])
    assert corrected.max() == 255.0 and corrected.dtype == np.float32
    np.testing.assert_array_equal(cast_like(np.array([-3.6, 2.5, 254.6, 300.0]), np.uint8), [0, 2, 255, 255])


def test_input_is_not_modified():
    image = clean_image() + on_grid(shadow())
    before = image.copy()
    correct_tile_shadow(image, TILE, n_empty=3)
    subtract_artifact(image, shadow())
    np.testing.assert_array_equal(image, before)


def test_strict_refuses_a_tile_size_that_does_not_divide():
    image = clean_image()
    with pytest.raises(InputError, match=r"does not divide the image \(160x230\).*30 column"):
        correct_tile_shadow(image, TILE, strict=True)
    correct_tile_shadow(image[:, :200], TILE, strict=True)  # 200 = 5 x 40: accepted


@pytest.mark.parametrize(
    "image, tile, kwargs, message",
    [
        (np.ones((64, 64)), 32, {}, "constant"),
        (np.where(np.eye(64) > 0, np.nan, 1.0), 32, {}, "64 NaN"),
        (np.random.default_rng(0).random((64, 64)), 100, {}, "larger than the image"),
        (np.random.default_rng(0).random((64, 60)), 40, {}, "only 1 complete tile"),
        (np.random.default_rng(0).random((64, 64)), 32, {"n_empty": 5}, "holds 4 complete tiles"),
        (np.random.default_rng(0).random((64, 64)), 32, {"tiles": [(2, 0)]}, r"Tile \(2, 0\) is not a complete tile"),
        (np.random.default_rng(0).random((64, 64)), 1, {}, "at least 2 pixels"),
        (np.random.default_rng(0).random((64, 64)), 32, {"criterion": "dim"}, "flat, dark, bright"),
    ],
)
def test_bad_input_gives_a_clear_error(image, tile, kwargs, message):
    with pytest.raises(InputError, match=message):
        correct_tile_shadow(image, tile, **kwargs)


def test_progress_and_cancel():
    image = clean_image() + on_grid(shadow())
    calls = []
    correct_tile_shadow(image, TILE, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        correct_tile_shadow(image, TILE, cancel=cancel)
