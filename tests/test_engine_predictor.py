"""The Predictor: tiling is invisible in the result, every input kind agrees, runs can be stopped."""

import threading
import tracemalloc

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_virtual_stain.engine.normalise import compute_stats
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import Cancelled, CheckpointError, InputError
from napari_virtual_stain.models.card import ModelCard

NO_NORM = {"kind": "none"}



def make_card(n_in=1, n_out=None, dims=2, tile=16, overlap=4, norm=NO_NORM, activation="none", **kw):
    n_out = n_in if n_out is None else n_out
    return ModelCard(
        name="test model", task="stain", architecture="test", arch_args={}, spatial_dims=dims,
        input_channels=[f"in{i}" for i in range(n_in)], output_channels=[f"out{i}" for i in range(n_out)],
        input_normalisation=norm, output_activation=activation,
        tile=[tile] * dims, overlap=[overlap] * dims, **kw)


def conv_stack(n_in: int, n_out: int, dims: int = 2, seed: int = 0) -> torch.nn.Module:
    """Three 3x3 convolutions (zero padding): every output pixel sees 3 pixels around it."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(n_in, 4, 3, padding=1), torch.nn.Tanh(),
                               conv(4, 4, 3, padding=1), torch.nn.Tanh(),
                               conv(4, n_out, 3, padding=1))


def untiled(model, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(image)[None]).numpy()[0]


class BatchMeanSubtract(torch.nn.Module):
    """Depends on the other tiles of its batch even in eval mode (like DeepLIIF's batch-norm nets)."""

    def forward(self, x):
        return x - x.mean(dim=(0, 2, 3), keepdim=True)


RNG = np.random.default_rng(0)


# ---- an identity model returns its input exactly -------------------------------------------

@pytest.mark.parametrize("shape", [(2, 37, 53), (2, 5, 7), (2, 16, 16), (2, 33, 17), (2, 1, 40)])
@pytest.mark.parametrize("overlap", [0, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_identity_2d_is_exact(shape, overlap, batch_size):
    image = RNG.random(shape, dtype=np.float32) * 1000 - 300
    predictor = Predictor(torch.nn.Identity(), make_card(n_in=2, overlap=overlap), device="cpu", batch_size=batch_size)
    result = predictor.predict(image)
    assert result.dtype == np.float32 and result.shape == shape
    np.testing.assert_array_equal(result, image)


@pytest.mark.parametrize("shape", [(1, 9, 21, 19), (1, 3, 5, 6), (1, 8, 8, 8)])
@pytest.mark.parametrize("overlap,batch_size", [(0, 1), (2, 3), (4, 2)])
def test_identity_3d_is_exact(shape, overlap, batch_size):
    image = RNG.random(shape, dtype=np.float32)
    predictor = Predictor(torch.nn.Identity(), make_card(dims=3, tile=8, overlap=overlap), device="cpu", batch_size=batch_size)
    np.testing.assert_array_equal(predictor.predict(image), image)


# ---- a convolutional model: tiled == untiled once the overlap covers its context ------------

def test_conv_model_tiled_equals_untiled_with_enough_overlap():
    model = conv_stack(2, 3)
    image = RNG.random((2, 70, 45), dtype=np.float32)
    expected = untiled(model, image)
    # Receptive radius 3; the blend ignores the outer quarter of each overlap, so 12 suffices.
    predictor = Predictor(model, make_card(n_in=2, n_out=3, tile=24, overlap=12), device="cpu", batch_size=4, precision="fp32")
    np.testing.assert_allclose(predictor.predict(image), expected, atol=1e-5, rtol=0)


def test_conv_model_tiles_show_seams_without_overlap():
    model = conv_stack(2, 3)
    image = RNG.random((2, 70, 45), dtype=np.float32)
    expected = untiled(model, image)
    predictor = Predictor(model, make_card(n_in=2, n_out=3, tile=24, overlap=0), device="cpu", precision="fp32")
    assert np.abs(predictor.predict(image) - expected).max() > 1e-2


def test_conv_model_3d_tiled_equals_untiled():
    model = conv_stack(1, 2, dims=3)
    image = RNG.random((1, 20, 26, 23), dtype=np.float32)
    predictor = Predictor(model, make_card(n_out=2, dims=3, tile=16, overlap=12), device="cpu", batch_size=2, precision="fp32")
    np.testing.assert_allclose(predictor.predict(image), untiled(model, image), atol=1e-5, rtol=0)


def test_bf16_autocast_is_close_to_fp32():
    model = conv_stack(2, 3)
    image = RNG.random((2, 40, 40), dtype=np.float32)
    card = make_card(n_in=2, n_out=3, tile=24, overlap=12)
    low = Predictor(model, card, device="cpu", precision="bf16").predict(image)
    full = Predictor(model, card, device="cpu", precision="fp32").predict(image)
    assert 0 < np.abs(low - full).max() < 0.05  # really computed in bf16, and still close


# ---- stacks ----------------------------------------------------------------------------------

def test_2d_model_on_stack_runs_plane_by_plane():
    model = conv_stack(2, 1)
    stack = RNG.random((2, 4, 30, 27), dtype=np.float32)
    card = make_card(n_in=2, n_out=1, tile=16, overlap=8)
    predictor = Predictor(model, card, device="cpu", batch_size=3, precision="fp32")
    result = predictor.predict(stack)
    assert result.shape == (1, 4, 30, 27)
    for z in range(4):
        plane = Predictor(model, card, device="cpu", precision="fp32").predict(stack[:, z])
        np.testing.assert_allclose(result[:, z], plane, atol=1e-6, rtol=0)
    assert np.abs(result[:, 0] - result[:, 1]).max() > 1e-3  # the planes really differ


def test_3d_model_on_2d_image_is_refused():
    predictor = Predictor(torch.nn.Identity(), make_card(dims=3, tile=8, overlap=2), device="cpu")
    with pytest.raises(InputError, match="3D model.*single 2D plane"):
        predictor.predict(np.zeros((1, 20, 20), np.float32))


def test_wrong_channel_count_names_expected_and_found():
    predictor = Predictor(torch.nn.Identity(), make_card(n_in=3), device="cpu")
    with pytest.raises(InputError, match=r"expects 3 input channel\(s\) \(in0, in1, in2\) but the image has 2"):
        predictor.predict(np.zeros((2, 20, 20), np.float32))
    with pytest.raises(InputError, match="axes"):
        predictor.predict(np.zeros((20, 20), np.float32))


def test_tile_and_overlap_that_do_not_fit_are_refused():
    with pytest.raises(InputError, match="overlap"):
        Predictor(torch.nn.Identity(), make_card(), device="cpu", tile=[16, 16], overlap=[16, 4])
    with pytest.raises(InputError, match="2D model"):
        Predictor(torch.nn.Identity(), make_card(), device="cpu", tile=[16, 16, 16])


# ---- normalisation and output mapping ------------------------------------------------------

def test_normalisation_uses_whole_image_statistics_and_tanh_maps_to_unit_range():
    image = np.zeros((1, 40, 40), np.float32)
    image[0, :, 20:] = 100.0  # a tile on the left alone would see only zeros
    card = make_card(tile=16, overlap=4, norm={"kind": "range", "min": 0, "max": 100, "to": [-1, 1]}, activation="tanh")
    result = Predictor(torch.nn.Identity(), card, device="cpu").predict(image)
    np.testing.assert_allclose(result[0, :, :20], 0.0, atol=1e-7)
    np.testing.assert_allclose(result[0, :, 20:], 1.0, atol=1e-7)


def test_percentile_normalisation_is_consistent_across_tiles():
    image = np.linspace(0, 1000, 50 * 50, dtype=np.float32).reshape(1, 50, 50)
    card = make_card(tile=16, overlap=4, norm={"kind": "percentile", "low": 0.0, "high": 100.0})
    result = Predictor(torch.nn.Identity(), card, device="cpu").predict(image)
    np.testing.assert_allclose(result, image / 1000.0, atol=1e-6)


# ---- progress and cancel --------------------------------------------------------------------

def test_progress_is_monotonic_and_reaches_total():
    calls = []
    predictor = Predictor(torch.nn.Identity(), make_card(tile=16, overlap=4), device="cpu", batch_size=4)
    predictor.predict(RNG.random((1, 50, 40), dtype=np.float32), progress=lambda d, t: calls.append((d, t)))
    total = 4 * 3  # Y starts 0,12,24,34; X starts 0,12,24
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[0] >= 1


def test_cancel_from_progress_stops_after_the_first_batch():
    cancel = threading.Event()
    forwards = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            forwards.append(len(x))
            return x

    def progress(done, total):
        cancel.set()

    predictor = Predictor(Counting(), make_card(tile=16, overlap=4), device="cpu", batch_size=2)
    with pytest.raises(Cancelled):
        predictor.predict(RNG.random((1, 60, 60), dtype=np.float32), progress=progress, cancel=cancel)
    assert forwards == [2]  # the batch that was running finished; no further forward pass


def test_cancel_before_start():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        Predictor(torch.nn.Identity(), make_card(), device="cpu").predict(np.zeros((1, 8, 8), np.float32), cancel=cancel)


# ---- lazy inputs and outputs ---------------------------------------------------------------

def test_dask_and_zarr_inputs_match_numpy_and_zarr_out_is_written():
    model = conv_stack(2, 2)
    image = RNG.random((2, 3, 45, 38), dtype=np.float32)
    card = make_card(n_in=2, n_out=2, tile=16, overlap=8)
    predictor = Predictor(model, card, device="cpu", batch_size=3, precision="fp32")
    expected = predictor.predict(image)
    from_dask = predictor.predict(da.from_array(image, chunks=(1, 1, 16, 16)))
    z_in = zarr.zeros(image.shape, chunks=(1, 1, 20, 20), dtype="f4")
    z_in[:] = image
    z_out = zarr.full((2, 3, 45, 38), np.nan, chunks=(1, 1, 16, 16), dtype="f4")
    returned = predictor.predict(z_in, out=z_out)
    assert returned is z_out
    np.testing.assert_array_equal(from_dask, expected)
    np.testing.assert_array_equal(z_out[:], expected)


def test_numpy_out_is_filled_and_wrong_out_shape_refused():
    image = RNG.random((1, 30, 30), dtype=np.float32)
    predictor = Predictor(torch.nn.Identity(), make_card(), device="cpu")
    out = np.full((1, 30, 30), np.nan, np.float32)
    assert predictor.predict(image, out=out) is out
    np.testing.assert_array_equal(out, image)
    with pytest.raises(InputError, match="output array"):
        predictor.predict(image, out=np.zeros((2, 30, 30), np.float32))


def test_integer_input_is_accepted():
    image = RNG.integers(0, 255, (1, 20, 20)).astype(np.uint8)
    result = Predictor(torch.nn.Identity(), make_card(), device="cpu").predict(image)
    np.testing.assert_array_equal(result, image.astype(np.float32))


# ---- batch-dependent networks ---------------------------------------------------------------

def test_batch_dependent_model_runs_one_tile_per_pass():
    image = RNG.random((1, 40, 40), dtype=np.float32)
    card = make_card(tile=16, overlap=4, batch_independent=False)
    model = BatchMeanSubtract()
    batched_request = Predictor(model, card, device="cpu", batch_size=8, precision="fp32")
    assert batched_request.batch_size == 1
    one_by_one = Predictor(model, make_card(tile=16, overlap=4), device="cpu", batch_size=1, precision="fp32")
    np.testing.assert_array_equal(batched_request.predict(image), one_by_one.predict(image))
    # Had the tiles shared a batch, the result would differ: the test can fail.
    wrongly_batched = Predictor(model, make_card(tile=16, overlap=4), device="cpu", batch_size=8, precision="fp32")
    assert np.abs(wrongly_batched.predict(image) - one_by_one.predict(image)).max() > 1e-3


# ---- padding of small images ------------------------------------------------------------------

def test_small_image_is_padded_to_the_tile_and_cropped_back():
    seen = []

    class NeedsFullTile(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[2:]))
            assert x.shape[2:] == (16, 16)
            return x * 2

    image = RNG.random((1, 5, 9), dtype=np.float32)
    result = Predictor(NeedsFullTile(), make_card(), device="cpu").predict(image)
    assert seen == [(16, 16)]
    np.testing.assert_allclose(result, image * 2, rtol=1e-6)


def test_models_declaring_a_size_multiple_get_smaller_padding():
    seen = []

    class Multiple4(torch.nn.Module):
        size_multiple = 4

        def forward(self, x):
            seen.append(tuple(x.shape[2:]))
            return x

    Predictor(Multiple4(), make_card(tile=16), device="cpu").predict(np.ones((1, 5, 9), np.float32))
    assert seen == [(8, 12)]


def test_model_returning_wrong_channels_is_a_checkpoint_error():
    predictor = Predictor(torch.nn.Conv2d(1, 2, 1), make_card(n_in=1, n_out=3), device="cpu")
    with pytest.raises(CheckpointError, match="3 channel"):
        predictor.predict(np.zeros((1, 8, 8), np.float32))


def test_tiles_are_fitted_to_the_image_for_models_with_a_size_multiple():
    seen = set()

    class Multiple2(torch.nn.Module):
        size_multiple = 2

        def forward(self, x):
            seen.add(tuple(x.shape[2:]))
            return x

    image = RNG.random((1, 30, 30), dtype=np.float32)
    result = Predictor(Multiple2(), make_card(tile=16, overlap=4), device="cpu").predict(image)
    assert seen == {(14, 14)}  # 3 x 3 tiles either way, but 14 px instead of 16
    np.testing.assert_array_equal(result, image)


class SeenConv(torch.nn.Module):
    """``conv_stack`` that records the tile shapes it is given and accepts any multiple of 4."""
    size_multiple = 4

    def __init__(self):
        super().__init__()
        self.net, self.seen = conv_stack(1, 1), []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        return self.net(x)


def test_a_current_view_with_its_margins_is_one_tile_and_the_untiled_answer():
    image = RNG.random((1, 24, 24), dtype=np.float32)  # a 16 x 16 view read with 4 px (the overlap) around it
    model = SeenConv()
    # fp32: "auto" is bf16 on CPUs with native bf16, and this compares to an fp32 run
    result = Predictor(model, make_card(tile=16, overlap=4), device="cpu", precision="fp32").predict(image)
    assert model.seen == [(24, 24)]  # one tile, not a 2 x 2 grid of 12-px tiles
    np.testing.assert_allclose(result, untiled(model.net, image), atol=1e-6)  # no seam to blend

    model = SeenConv()  # rounded up to the size multiple; one pixel more than a tile and its margins: tiled as before
    Predictor(model, make_card(tile=16, overlap=4), device="cpu").predict(RNG.random((1, 25, 21), dtype=np.float32))
    assert model.seen[0][0] <= 16 and model.seen[0][1] == 24

    model = SeenConv()  # a tile the user chose is kept: it may be a memory limit
    Predictor(model, make_card(tile=16, overlap=4), device="cpu", tile=(16, 16)).predict(image)
    assert model.seen and all(s == (16, 16) for s in model.seen)


def test_region_with_whole_image_stats_matches_the_whole_image_run():
    image = np.linspace(0, 1000, 60 * 60, dtype=np.float32).reshape(1, 60, 60)
    card = make_card(tile=16, overlap=4, norm={"kind": "percentile", "low": 1.0, "high": 99.0})
    predictor = Predictor(torch.nn.Identity(), card, device="cpu")
    whole = predictor.predict(image)
    stats = compute_stats(image, card.input_normalisation)
    region = predictor.predict(image[:, 10:30, 5:50], stats=stats)
    np.testing.assert_array_equal(region, whole[:, 10:30, 5:50])
    own = predictor.predict(image[:, 10:30, 5:50])  # the region's own statistics differ
    assert np.abs(own - region).max() > 0.1


def test_memory_does_not_grow_with_image_height_when_writing_to_zarr(tmp_path):
    # Only a strip of tile rows is held at a time: an image 16x taller needs no more memory
    # (a full-size float64 accumulator for the tall image alone would be 17 MB).
    peaks = {}
    predictor = Predictor(torch.nn.Identity(), make_card(tile=128, overlap=16), device="cpu", batch_size=2)
    for rows in (256, 4096):
        image = RNG.random((1, rows, 512), dtype=np.float32)
        out = zarr.open_array(str(tmp_path / f"{rows}.zarr"), mode="w", shape=image.shape, chunks=(1, 128, 128), dtype="f4")
        tracemalloc.start()
        predictor.predict(image, out=out)
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(out[:], image)
    assert peaks[4096] < 1.5 * peaks[256]
    assert peaks[4096] < 0.5 * 4096 * 512 * 4  # less than half of one full-size float32 copy


def test_default_batch_size_follows_tile_size_and_device():
    assert Predictor(torch.nn.Identity(), make_card(tile=512, overlap=32), device="cpu").batch_size == 4
    assert Predictor(torch.nn.Identity(), make_card(tile=1024, overlap=32), device="cpu").batch_size == 1
    assert Predictor(torch.nn.Identity(), make_card(tile=64, overlap=8), device="cpu").batch_size == 8


class LayoutRecorder(torch.nn.Module):
    """A convolution that notes whether each tile it is given is channels_last."""

    def __init__(self, memory_format=None):
        super().__init__()
        self.conv = conv_stack(2, 1)  # two input channels: a tile's two layouts differ
        if memory_format is not None:
            self.memory_format = memory_format
        self.channels_last_tiles: list[bool] = []

    def forward(self, x):
        self.channels_last_tiles.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.conv(x)


@pytest.mark.parametrize("declared", [None, torch.contiguous_format])
def test_a_model_that_names_its_memory_format_keeps_it_and_gets_the_same_answer(declared):
    image = np.random.default_rng(0).random((2, 40, 40), dtype=np.float32)
    model = LayoutRecorder(declared)
    predictor = Predictor(model, make_card(n_in=2, n_out=1, tile=40, overlap=8), device="cpu", precision="fp32")
    out = predictor.predict(image)
    weight = model.conv[2].weight  # 4 -> 4 channels: its two layouts differ
    keeps_nchw = declared is torch.contiguous_format
    assert weight.is_contiguous() == keeps_nchw  # converted to channels_last only when nothing is declared
    assert model.channels_last_tiles and all(t != keeps_nchw for t in model.channels_last_tiles)
    np.testing.assert_allclose(out, untiled(model.conv, image), atol=1e-5)
