"""One band of rows predicted on its own gives exactly the whole run's values there: a big image's
bands can be tasks on different workers."""

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.factory import build_model

from conftest import tiny_unet_card


def predictor(spatial_dims=2):
    card = tiny_unet_card(spatial_dims=spatial_dims)
    torch.manual_seed(0)
    return Predictor(build_model(card.architecture, card.arch_args), card, device="cpu", precision="fp32")


@pytest.mark.parametrize("shape, bands", [
    ((1, 150, 110), [(0, 40), (40, 97), (97, 150)]),   # 2D image: bands of Y
    ((1, 5, 90, 70), [(0, 33), (33, 90)]),              # a stack through a 2D model: Y of every plane
])
def test_bands_assemble_the_whole_run_bit_for_bit(shape, bands):
    p = predictor()
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    whole = p.predict(image)
    out = np.full_like(whole, np.nan)
    for lo, hi in bands:
        p.predict(image, out=out, rows=slice(lo, hi), stats=None)
    np.testing.assert_array_equal(out, whole)


def test_a_band_of_a_3d_stack_is_a_slab_of_planes():
    p = predictor(spatial_dims=3)
    image = np.random.default_rng(1).random((1, 20, 40, 40)).astype(np.float32)
    whole = p.predict(image)
    out = np.full_like(whole, np.nan)
    p.predict(image, out=out, rows=slice(7, 13))
    np.testing.assert_array_equal(out[:, 7:13], whole[:, 7:13])
    assert np.isnan(out[:, :7]).all() and np.isnan(out[:, 13:]).all()  # nothing outside the band is written


def test_a_band_runs_only_the_tiles_that_reach_it():
    p = predictor()
    image = np.random.default_rng(2).random((1, 400, 64)).astype(np.float32)
    calls = []
    p.predict(image, progress=lambda done, total: calls.append(total))
    whole_tiles = calls[-1]
    calls.clear()
    p.predict(image, out=np.zeros((2, 400, 64), np.float32), rows=slice(100, 130), progress=lambda d, t: calls.append(t))
    assert calls[-1] < whole_tiles / 4


def test_an_empty_band_is_one_sentence():
    p = predictor()
    image = np.zeros((1, 64, 64), np.float32)
    with pytest.raises(InputError, match="not a band"):
        p.predict(image, out=np.zeros((2, 64, 64), np.float32), rows=slice(30, 30))
