"""run_stain: regions with context, whole-image statistics, NaNs, lazy inputs."""

import dask.array as da
import numpy as np
import torch

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain

from conftest import tiny_unet_card


def predictor(**kw):
    card = tiny_unet_card(**kw)
    torch.manual_seed(0)  # the same network whatever ran before (a test's tolerance was chosen for it)
    return Predictor(build_model(card.architecture, card.arch_args), card, device="cpu", precision="fp32")


def test_region_far_from_its_border_matches_the_whole_image_run():
    p = predictor()
    image = np.random.default_rng(0).random((120, 140)).astype(np.float32)
    whole = run_stain(p, image).data
    region = Region((40, 50), (90, 110))
    part = run_stain(p, image, region=region)
    assert part.data.shape == (2, 50, 60)
    # with whole-image statistics and real context, the view's centre equals the whole run
    np.testing.assert_allclose(part.data[:, 10:-10, 10:-10], whole[:, 50:80, 60:100], atol=2e-3)


def test_view_uses_whole_image_statistics_not_its_own():
    p = predictor()
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    image[:, 32:] *= 10  # the right half is much brighter
    stats = run_stain(p, image).stats
    region = Region((0, 0), (64, 24))
    with_whole = run_stain(p, image, region=region, stats=stats).data
    own = run_stain(p, image[:, :30], region=region).data  # statistics of the dim part only
    assert np.abs(with_whole - own).max() > 1e-3  # statistics matter...
    np.testing.assert_allclose(run_stain(p, image, region=region).data, with_whole)  # ...and default to the whole


def test_nans_are_reported_and_never_reach_the_output():
    p = predictor()
    image = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    image[5:10, 5:10] = np.nan
    result = run_stain(p, image)
    assert result.nan_fraction == 25 / 1600
    assert np.isfinite(result.data).all()
    assert np.isnan(image[5, 5])  # the input is untouched


def test_lazy_dask_input_gives_the_numpy_result():
    p = predictor()
    image = np.random.default_rng(3).random((3, 50, 60)).astype(np.float32)
    lazy = da.from_array(image, chunks=(1, 25, 30))
    np.testing.assert_allclose(run_stain(p, lazy).data, run_stain(p, image).data, atol=1e-6)
    region = Region((1, 10, 10), (2, 40, 50))
    np.testing.assert_allclose(run_stain(p, lazy, region=region).data, run_stain(p, image, region=region).data,
                               atol=1e-6)


def test_a_view_is_read_on_the_networks_pixel_grid():
    from napari_virtual_stain.tasks.stain import _on_grid

    box = _on_grid(Region((3, 37, 70), (5, 101, 130)), (10, 200, 131), 32)
    assert box == Region((3, 32, 64), (5, 128, 131))  # Y and X out to multiples of 32, clipped; Z untouched
    assert _on_grid(Region((3, 5), (9, 9)), (20, 20), 1) == Region((3, 5), (9, 9))
