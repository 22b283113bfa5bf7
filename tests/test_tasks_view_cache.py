"""Panning the current view predicts only the newly visible pixels."""

import numpy as np

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain, run_stain_reusing
from napari_virtual_stain.tasks.view_cache import ViewCache

from conftest import tiny_unet_card


def _area(boxes):
    return sum(int(np.prod(b.shape)) for b in boxes)


def test_a_pan_leaves_only_the_new_strip_missing():
    cache = ViewCache(2, (200, 300))
    view = Region((50, 50), (150, 200))
    assert cache.missing(view) == [view]
    cache.store(view, np.ones((2, 100, 150), np.float32))
    assert cache.missing(view) == []
    right = Region((50, 80), (150, 230))  # 30 columns to the right
    assert cache.missing(right) == [Region((50, 200), (150, 230))]
    down = Region((70, 50), (170, 200))  # 20 rows down
    assert cache.missing(down) == [Region((150, 50), (170, 200))]


def test_a_diagonal_pan_is_two_boxes_covering_exactly_the_new_pixels():
    cache = ViewCache(1, (200, 300))
    cache.store(Region((50, 50), (150, 200)), np.zeros((1, 100, 150), np.float32))
    moved = Region((30, 70), (130, 220))  # up 20, right 20
    boxes = cache.missing(moved)
    assert len(boxes) == 2
    known = np.zeros((200, 300), bool)
    known[50:150, 50:200] = True
    new_pixels = int((~known[moved.slices]).sum())
    assert _area(boxes) == new_pixels  # not one box around the whole view


def test_the_reused_view_matches_a_fresh_prediction_and_costs_less():
    card = tiny_unet_card()
    predictor = Predictor(build_model(card.architecture, card.arch_args), card, device="cpu", precision="fp32")
    image = np.random.default_rng(0).random((160, 200)).astype(np.float32)
    stats = run_stain(predictor, image).stats
    cache = ViewCache(card.n_out, image.shape)
    run_stain_reusing(predictor, image, cache, Region((20, 20), (100, 120)), stats=stats)
    calls = []
    moved = Region((20, 50), (100, 150))  # panned 30 columns
    reused = run_stain_reusing(predictor, image, cache, moved, stats=stats, progress=lambda d, t: calls.append(t))
    fresh = run_stain(predictor, image, region=moved, stats=stats)
    assert reused.data.shape == fresh.data.shape == (2, 80, 100)
    np.testing.assert_allclose(reused.data, fresh.data, atol=2e-3)  # boxes meet like blended tiles
    assert set(calls) == {1000}  # one missing box went through the network
    assert 0.3 < cache.known_fraction < 0.5


def test_blocks_cover_the_missing_parts_exactly_once_nearest_the_centre_first():
    from napari_virtual_stain.tasks.view_cache import nearest_first

    view = Region((0, 0), (100, 160))
    parts = [Region((0, 0), (40, 160)), Region((40, 100), (100, 160))]
    blocks = nearest_first(parts, view, 32)
    cover = np.zeros((100, 160), int)
    for b in blocks:
        assert max(b.shape) <= 32
        cover[b.slices] += 1
    expected = np.zeros((100, 160), int)
    for p in parts:
        expected[p.slices] = 1
    np.testing.assert_array_equal(cover, expected)
    centre = np.array([50, 80])
    dist = [np.hypot(*(np.array([(a + b) / 2 for a, b in zip(x.start, x.stop)]) - centre)) for x in blocks]
    assert dist == sorted(dist)


def test_a_progressive_view_reports_each_block_and_assembles_the_same_view():
    card = tiny_unet_card()
    predictor = Predictor(build_model(card.architecture, card.arch_args), card, device="cpu", precision="fp32")
    image = np.random.default_rng(1).random((160, 200)).astype(np.float32)
    stats = run_stain(predictor, image).stats
    view = Region((16, 16), (144, 176))
    seen = []
    progressive = run_stain_reusing(predictor, image, ViewCache(card.n_out, image.shape), view, stats=stats,
                                    block=64, on_part=lambda box, values: seen.append((box, values.shape)))
    whole = run_stain_reusing(predictor, image, ViewCache(card.n_out, image.shape), view, stats=stats)
    assert len(seen) == 6 and all(shape == (2,) + box.shape for box, shape in seen)
    first = seen[0][0]
    assert first.start[0] <= 80 < first.stop[0] + 32 and first.start[1] <= 96 < first.stop[1] + 32  # the middle first
    np.testing.assert_allclose(progressive.data, whole.data, atol=2e-3)  # blocks meet like blended tiles
