"""PairedPatches and validate_pairs: crops, augmentation, the validation region, masks,
balanced sampling and the sentences for bad input."""

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.normalise import compute_stats, normalise
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.training.datasets import PairedPatches, split_regions, validate_pairs


def _pair(rng, spatial, n_targets=2):
    x = rng.random((1,) + spatial).astype(np.float32) * 100 + 10
    y = rng.random((n_targets,) + spatial).astype(np.float32)
    return x, y


@pytest.mark.parametrize("spatial, patch", [((40, 48), (16, 16)), ((8, 40, 48), (4, 16, 16)), ((40, 48), (16, 8))])
def test_crops_have_the_patch_shape(rng, spatial, patch):
    x, y = _pair(rng, spatial)
    data = PairedPatches([x], [y], patch, len(spatial))
    xb, yb, mb = data.sample_batch(5)
    assert xb.shape == (5, 1) + patch and yb.shape == (5, 2) + patch and mb.shape == yb.shape
    assert xb.dtype == yb.dtype == mb.dtype == torch.float32
    val = PairedPatches([x], [y], patch, len(spatial), split="val")
    assert len(val) >= 1 and val[0][0].shape == (1,) + patch


def test_input_is_normalised_like_the_predictor(rng):
    x, y = _pair(rng, (40, 40))
    spec = {"kind": "percentile", "low": 1.0, "high": 99.8}
    data = PairedPatches([x], [y], (16, 16), 2, split="val", input_normalisation=spec)
    region = data.region_of(0)
    expected = normalise(x[(slice(None),) + region], spec, compute_stats(x, spec))
    np.testing.assert_array_equal(data.pairs[0].x, expected)


def test_augmentation_moves_input_target_and_mask_together(rng):
    # The target equals the input and the mask marks a fixed pattern of the input's values:
    # any flip or rotation applied to one but not the others would break the equalities.
    x = rng.random((1, 48, 48)).astype(np.float32)
    y = x[0].copy()
    y[x[0] > 0.8] = np.nan
    data = PairedPatches([x], [[y]], (16, 16), 2, seed=3, input_normalisation={"kind": "none"})
    seen = set()
    for _ in range(30):
        xb, yb, mb = data.sample_batch(1)
        missing = (xb[0, 0] > 0.8)
        assert torch.equal(mb[0, 0] == 0, missing)
        np.testing.assert_allclose(yb[0, 0][~missing], ((xb[0, 0] - data.target_stats[0][0]["low"][0])
                                   / (data.target_stats[0][0]["high"][0] - data.target_stats[0][0]["low"][0])).clamp(0, 1)[~missing],
                                   atol=1e-5)
        seen.add(tuple(xb[0, 0, 0, :2].tolist()))
    assert len(seen) > 20  # crops differ


def test_validation_region_never_overlaps_training_crops(rng):
    # The input encodes the row index, so every crop tells which rows it came from.
    rows = np.repeat(np.arange(64, dtype=np.float32)[:, None], 40, axis=1)[None]
    y = rng.random((1, 64, 40)).astype(np.float32)
    common = dict(patch=(16, 16), spatial_dims=2, val_fraction=0.25, input_normalisation={"kind": "none"})
    train = PairedPatches([rows], [y], **common)
    val = PairedPatches([rows], [y], split="val", **common)
    train_rows = torch.cat([train.sample_batch(8)[0].flatten() for _ in range(40)])
    val_rows = torch.cat([val[i][0].flatten() for i in range(len(val))])
    assert train_rows.max() < val_rows.min()
    assert int(val_rows.min()) == 48 and int(val_rows.max()) == 63  # the last quarter
    assert int(train_rows.min()) == 0 and int(train_rows.max()) == 47  # all training rows reachable


def test_split_uses_x_when_y_is_too_short_and_refuses_tiny_layers():
    train, val = split_regions((20, 100), (16, 16), 0.15)
    assert train == (slice(0, 20), slice(0, 84)) and val == (slice(0, 20), slice(84, 100))
    assert split_regions((20, 20), (16, 16), 0.0) == ((slice(0, 20), slice(0, 20)), None)
    with pytest.raises(InputError, match="too small to hold a 16x16 training patch and a separate validation region"):
        split_regions((20, 20), (16, 16), 0.15)


def test_masks_from_nan_none_and_all_nan_channels(rng):
    x, y = _pair(rng, (32, 32), n_targets=1)
    partly = y[0].copy()
    partly[:10] = np.nan
    all_nan = np.full((32, 32), np.nan, np.float32)
    data = PairedPatches([x, x], [[partly, None], [all_nan, y[0]]], (16, 16), 2, val_fraction=0)
    first, second = data.pairs
    assert not first.mask[0, :10].any() and first.mask[0, 10:].all()
    assert (first.y[0, :10] == 0).all()  # missing values become 0, never NaN
    assert not first.mask[1].any() and not second.mask[0].any() and second.mask[1].all()
    assert data.target_stats[0][1] is None and data.target_stats[1][0] is None
    for _ in range(10):
        xb, yb, mb = data.sample_batch(4)
        assert torch.isfinite(yb).all()


def test_sampling_is_balanced_across_target_channels(rng):
    # 'rare' exists in one small pair out of three; area-weighted sampling would give it
    # about 1 crop in 9. Balanced sampling (paper 004) draws every second crop for 'rare',
    # and the crops drawn for 'common' come from the small pair 1 time in 9 as well.
    big_x, big_y = _pair(rng, (64, 64), n_targets=1)
    small_x, small_y = _pair(rng, (32, 32), n_targets=1)
    targets = [[big_y[0], None], [big_y[0], None], [small_y[0], small_y[0]]]
    data = PairedPatches([big_x, big_x, small_x], targets, (16, 16), 2, val_fraction=0,
                         target_names=["common", "rare"])
    counts = np.zeros(2)
    for _ in range(50):
        _, _, mb = data.sample_batch(4)
        counts += (mb.flatten(2).amax(2) > 0).sum(0).numpy()
    assert counts[0] == 200  # 'common' exists everywhere
    assert 100 <= counts[1] <= 100 + 2 * 100 / 9 + 5


def test_same_seed_same_batches_and_state_round_trip(rng):
    x, y = _pair(rng, (40, 40))
    a = PairedPatches([x], [y], (16, 16), 2, seed=5)
    b = PairedPatches([x], [y], (16, 16), 2, seed=5)
    assert torch.equal(a.sample_batch(3)[0], b.sample_batch(3)[0])
    state = a.get_state()
    following = a.sample_batch(3)[0]
    b.set_state(state)
    assert torch.equal(b.sample_batch(3)[0], following)


def test_bad_pairs_raise_input_errors_with_a_sentence(rng):
    x, y = _pair(rng, (600, 600), n_targets=1)
    _, wrong = _pair(rng, (512, 512), n_targets=1)
    with pytest.raises(InputError, match="The target layer 'nuclei' is 512x512 but the input is 600x600: pairs must have the same shape"):
        validate_pairs([x], [wrong], (64, 64), 2, target_names=["nuclei"])
    small_x, small_y = _pair(rng, (100, 100), n_targets=1)
    with pytest.raises(InputError, match="'bf' is 100x100, smaller than the 128x128 training patch"):
        validate_pairs([small_x], [small_y], (128, 128), 2, input_names=["bf"])
    with pytest.raises(InputError, match="'nuclei' is empty \\(all zeros or all missing\\)"):
        validate_pairs([x], [np.zeros_like(y)], (64, 64), 2, target_names=["nuclei"])
    with pytest.raises(InputError, match="'nuclei' is empty"):
        validate_pairs([x, x], [np.full_like(y, np.nan), [None]], (64, 64), 2, target_names=["nuclei"])
    with pytest.raises(InputError, match="'bf' is empty"):
        validate_pairs([np.zeros_like(x)], [y], (64, 64), 2, input_names=["bf"])
    with pytest.raises(InputError, match="same value"):
        validate_pairs([np.full_like(x, 3.0)], [y], (64, 64), 2, input_names=["bf"])
    with pytest.raises(InputError, match="needs \\(channels, Z, Y, X\\)"):
        validate_pairs([x], [y], (8, 64, 64), 3)
    with pytest.raises(InputError, match="2 input images but 1 target sets"):
        validate_pairs([x, x], [y], (64, 64), 2)
    with pytest.raises(InputError, match="has 2 channels but"):
        validate_pairs([x, np.concatenate([x, x])], [y, y], (64, 64), 2)
    stack = rng.random((1, 10, 100, 100)).astype(np.float32)
    with pytest.raises(InputError, match="is 10x100x100 \\(ZxYxX\\), smaller than the 16x64x64 training patch"):
        validate_pairs([stack], [stack], (16, 64, 64), 3)


def test_validation_band_can_be_lower_than_the_patch(rng):
    # 15% of 80 rows is 12; the band is raised to 32 rows (not to the 48-row patch), and
    # its tiles are 32 rows high so the training region keeps 48 rows.
    x, y = _pair(rng, (80, 100))
    val = PairedPatches([x], [y], (48, 48), 2, split="val")
    assert val.region_of(0) == (slice(48, 80), slice(0, 100))
    assert {tuple(val[i][0].shape) for i in range(len(val))} == {(1, 32, 48)}
    assert len(val) == 3  # columns 0, 48 and 52 cover the 100-pixel width
