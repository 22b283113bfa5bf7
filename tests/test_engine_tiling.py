"""The tile grid, blend windows, margins and strip-by-strip blending."""

import numpy as np
import pytest

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.engine.tiling import (
    EDGE_WEIGHT,
    StripBlender,
    blend_profile,
    blend_window,
    crop_with_margin,
    fit_tile,
    n_tiles,
    normalised_axis_weights,
    tile_slices,
    tile_starts,
)


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (97, 32, 8), (32, 32, 4), (33, 32, 0), (5, 32, 8), (1000, 512, 32)])
def test_tile_starts_cover_the_axis_with_flush_last_tile(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = np.zeros(size, int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1
    assert starts[0] == 0
    if size > tile:
        assert starts[-1] == size - tile  # flush with the end, never past it
        steps = np.diff(starts)
        assert (steps[:-1] == tile - overlap).all() and 0 < steps[-1] <= tile - overlap
    else:
        assert starts == [0]


def test_tile_starts_known_values():
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(101, 40, 10) == [0, 30, 60, 61]


@pytest.mark.parametrize("tile,overlap", [(32, 32), (32, 40), (32, -1), (0, 0)])
def test_tile_starts_rejects_overlap_that_does_not_fit(tile, overlap):
    with pytest.raises(InputError, match="overlap"):
        tile_starts(100, tile, overlap)


def test_tile_slices_cover_3d_and_count_matches():
    shape, tile, overlap = (9, 50, 41), (4, 16, 16), (1, 4, 6)
    slices = tile_slices(shape, tile, overlap)
    assert len(slices) == n_tiles(shape, tile, overlap) == 3 * 4 * 4  # Z: 0,3,5  Y: 0,12,24,34  X: 0,10,20,25
    covered = np.zeros(shape, int)
    for sl in slices:
        covered[sl] += 1
        assert all(s.stop - s.start == min(t, n) for s, t, n in zip(sl, tile, shape))
    assert covered.min() >= 1


def test_blend_window_is_smooth_positive_and_flat_inside():
    w = blend_window((64, 48), 16)
    assert w.dtype == np.float32 and w.shape == (64, 48)
    assert w.min() > 0  # never 0: a border pixel covered by one tile keeps its value
    assert w.max() == 1.0
    assert (w[16:48, 16:32] == 1.0).all()
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    profile = blend_profile(64, 16)
    assert profile[0] == EDGE_WEIGHT  # outer quarter of the overlap is (almost) ignored
    assert (np.diff(profile[:16]) >= 0).all()  # rises monotonically over the overlap
    assert np.abs(np.diff(profile)).max() < 0.5  # no hard seam


def test_two_ramps_cross_fade_to_one():
    tile, overlap = 40, 12
    profile = blend_profile(tile, overlap)
    # Two tiles overlapping by exactly `overlap`: in the ramp zone weights sum to 1.
    summed = profile[tile - overlap:] + profile[:overlap]
    trim = overlap // 4
    np.testing.assert_allclose(summed[trim:overlap - trim], 1.0, atol=1e-12)


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (37, 16, 6), (7, 16, 4), (64, 16, 0)])
def test_normalised_axis_weights_sum_to_one(size, tile, overlap):
    total = np.zeros(size)
    for s, w in zip(tile_starts(size, tile, overlap), normalised_axis_weights(size, tile, overlap)):
        total[s:s + len(w)] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_strip_blender_reproduces_constant_tiles_and_writes_each_row_once():
    shape, tile, overlap = (45, 30), (16, 16), (6, 4)
    image = np.random.default_rng(0).random((2,) + shape).astype(np.float32)
    out = np.full((2,) + shape, np.nan, np.float32)
    written = []

    def write(rows, values):
        written.append((rows.start, rows.stop))
        out[:, rows] = values

    blender = StripBlender(write, 2, shape, tile, overlap)
    for sl in tile_slices(shape, tile, overlap):
        blender.add(sl, image[(slice(None),) + sl])
    blender.close()
    np.testing.assert_array_equal(out, image)  # exact, not just close
    # Rows are written in order, each exactly once, and the buffer never exceeds one strip.
    assert written[0][0] == 0 and written[-1][1] == shape[0]
    assert all(a[1] == b[0] for a, b in zip(written, written[1:]))
    assert max(stop - start for start, stop in written) <= tile[0]


def test_one_tile_over_the_whole_image_is_written_once_as_it_came():
    values = np.random.default_rng(1).random((3, 20, 24)).astype(np.float32)
    written = []
    blender = StripBlender(lambda rows, v: written.append((rows, v)), 3, (20, 24), (20, 24), (8, 8))
    blender.add((slice(0, 20), slice(0, 24)), values)
    blender.close()
    assert len(written) == 1 and written[0][0] == slice(0, 20)
    np.testing.assert_array_equal(written[0][1], values)  # the blend of one tile is the tile


def test_strip_blender_refuses_out_of_order_tiles():
    blender = StripBlender(lambda rows, v: None, 1, (40, 10), (16, 10), (4, 0))
    slices = tile_slices((40, 10), (16, 10), (4, 0))
    blender.add(slices[1], np.zeros((1, 16, 10)))
    with pytest.raises(ValueError):
        blender.add(slices[0], np.zeros((1, 16, 10)))


def test_crop_with_margin_clips_at_borders_and_maps_back():
    shape = (100, 80)
    box = (slice(5, 40), slice(50, 80))
    padded, inner = crop_with_margin(shape, box, 16)
    assert padded == (slice(0, 56), slice(34, 80))
    image = np.arange(100 * 80).reshape(shape)
    np.testing.assert_array_equal(image[padded][inner], image[box])


def test_crop_with_margin_rejects_empty_box():
    with pytest.raises(InputError, match="empty"):
        crop_with_margin((10, 10), (slice(5, 5), slice(0, 10)), 2)


def test_fit_tile_needs_no_more_tiles_and_computes_fewer_pixels():
    assert fit_tile(2048, 512, 32, 16) == 448  # 5 tiles either way, 23% fewer pixels
    assert fit_tile(100, 512, 32, 16) == 112  # small image: one tile, rounded up
    assert fit_tile(10_000, 512, 32, 16) == 512  # large image: the full tile is already tight
    for size in range(20, 700, 7):
        for tile, overlap, multiple in [(512, 32, 16), (256, 64, 8), (96, 16, 1)]:
            fitted = fit_tile(size, tile, overlap, multiple)
            assert fitted <= tile and (fitted % multiple == 0 or fitted == tile)
            assert len(tile_starts(size, fitted, min(overlap, fitted - 1))) <= len(tile_starts(size, tile, overlap))
