"""Pyramid levels: which one a run predicts at, and whole-image statistics from a low-resolution level."""

import dask.array as da
import numpy as np
import pytest

from napari_virtual_stain.engine.normalise import compute_stats
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.tasks.pyramid import choose_level, pyramid_stats, stats_level
from napari_virtual_stain.tasks.view_cache import LevelViewCaches

from conftest import tiny_unet_card

X2 = [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0), (8.0, 8.0)]  # a x2 pyramid's factors per level


def raising_level(shape, chunks=256):
    """A lazy level whose every chunk raises when computed: proof that it is never read."""
    def refuse(block):
        raise AssertionError(f"a level of shape {shape} was read")
    return da.zeros(shape, dtype=np.float32, chunks=chunks).map_blocks(refuse, dtype=np.float32)


def smooth_image(size: int) -> np.ndarray:
    """Slowly varying intensities (tissue-like blobs at low frequency) over [0, ~1000]."""
    y, x = np.mgrid[0:size, 0:size] / size
    return (500 + 300 * np.sin(6.0 * x) * np.cos(4.0 * y) + 200 * np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.02)
            ).astype(np.float32)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape
    return image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)).astype(np.float32)


def test_without_pixel_sizes_the_displayed_level_is_used():
    assert choose_level(X2, 2).level == 2
    assert choose_level(X2, 1, image_pixel_size_um=0.25).level == 1  # the model says nothing
    assert choose_level(X2, 3, model_pixel_size_um=1.0).level == 3  # the image says nothing


def test_the_level_nearest_the_model_pixel_size_and_never_finer_than_displayed():
    # levels of 0.25, 0.5, 1 and 2 um pixels
    zoomed_in = choose_level(X2, 0, image_pixel_size_um=0.25, model_pixel_size_um=1.0)
    assert (zoomed_in.level, zoomed_in.pixel_size_um, zoomed_in.note) == (2, 1.0, None)
    assert choose_level(X2, 0, image_pixel_size_um=0.25, model_pixel_size_um=0.6).level == 1
    # zoomed out past the model's scale: the displayed level, never a finer (bigger) one, and a sentence
    zoomed_out = choose_level(X2, 3, image_pixel_size_um=0.25, model_pixel_size_um=0.5)
    assert zoomed_out.level == 3 and "zoom in" in zoomed_out.note
    # the model wants finer pixels than the image has, or coarser than its coarsest level
    assert "no level" in choose_level(X2, 0, image_pixel_size_um=1.0, model_pixel_size_um=0.25).note
    assert "no level" in choose_level(X2, 0, image_pixel_size_um=0.05, model_pixel_size_um=1.0).note


def test_statistics_come_from_the_coarsest_level_with_enough_pixels():
    shapes = [(4096, 4096), (2048, 2048), (1024, 1024), (512, 512)]
    assert stats_level(shapes, 2) == 2  # 1024 x 1024 = 2^20 pixels
    assert stats_level(shapes, 2, min_pixels=1 << 22) == 1
    assert stats_level([(300, 300), (150, 150)], 2) == 0  # a small image: its full resolution, exactly


def test_low_resolution_statistics_match_the_full_resolution_on_a_smooth_image():
    full = smooth_image(4096)
    levels = [raising_level(full.shape), raising_level((2048, 2048)), block_mean(full, 4), block_mean(full, 8)]
    card = tiny_unet_card()
    low = pyramid_stats(levels, card)  # reads level 2 only: the raising levels prove it
    exact = compute_stats(full[None], card.input_normalisation)
    spread = exact["high"][0] - exact["low"][0]
    assert spread > 500
    for key in ("low", "high"):
        assert abs(low[key][0] - exact[key][0]) < 0.005 * spread, (key, low[key], exact[key])


def test_a_single_level_gives_the_statistics_of_a_whole_image_run(rng):
    image = rng.random((3, 64, 80)).astype(np.float32)
    card = ModelCard(**{**tiny_unet_card(n_in=3).to_dict()})
    assert pyramid_stats([image], card) == compute_stats(image, card.input_normalisation)


def test_each_level_has_its_own_cache():
    caches = LevelViewCaches(2)
    first = caches.for_level(0, (64, 64))
    assert caches.for_level(0, (64, 64)) is first
    assert caches.for_level(1, (32, 32)) is not first and caches.for_level(1, (32, 32)).shape == (32, 32)
    assert caches.for_level(2, (1 << 15, 1 << 15)) is None  # too big to hold: predicted afresh each time
    with pytest.raises(ValueError):
        caches.for_level(1, (30, 30))
