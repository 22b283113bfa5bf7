"""`virtual-stain predict` and `virtual-stain models` end to end, through the shell entry point."""

import numpy as np
import pytest
import tifffile
import torch

from napari_virtual_stain.cli import main
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.models.registry import load_model
from napari_virtual_stain.tasks.stain import run_stain

from conftest import save_tiny_model


@pytest.fixture
def tiny(user_models):
    save_tiny_model(user_models, name="tiny-2d")
    return "tiny-2d"


def test_predict_writes_named_channels_with_the_pixel_size(tmp_path, tiny, capsys):
    image = np.random.default_rng(0).integers(0, 4000, (3, 50, 70)).astype(np.uint16)
    src = tmp_path / "in.tif"
    save_tiff(src, image, "ZYX", [], (1.0, 0.2, 0.2))
    out = tmp_path / "out.tif"
    assert main(["predict", str(src), "-o", str(out), "--model", tiny, "--tile", "32", "--overlap", "8",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    result = load_image(out)
    assert result.axes == "CZYX" and result.channel_names == ["nuclei", "membrane"]
    assert result.data.shape == (2, 3, 50, 70)
    assert result.pixel_size_um[-1] == pytest.approx(0.2)
    model, card = load_model(tiny)
    expected = run_stain(Predictor(model, card, device="cpu", precision="fp32", tile=(32, 32), overlap=(8, 8)), image).data
    np.testing.assert_allclose(result.data, expected, atol=1e-5)
    assert "wrote" in capsys.readouterr().err


def test_models_lists_cards(tiny, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-2d [user] stain, 2D, brightfield -> nuclei+membrane" in out


@pytest.mark.parametrize("make,args,message", [
    (lambda p: p.write_text("not an image"), [], "not"),
    (lambda p: tifffile.imwrite(p, np.zeros((20, 20, 3), np.uint8), photometric="rgb"), [], "RGB"),
    (lambda p: tifffile.imwrite(p, np.zeros((20, 20), np.uint8)), ["--model", "nope"], "no model called 'nope'"),
    (lambda p: tifffile.imwrite(p, np.zeros((20, 20), np.uint8)), ["--tile", "32", "--overlap", "40"], "overlap"),
    # a GPU this machine does not have: CUDA on a CPU-only machine, Apple's MPS on a CUDA one
    (lambda p: tifffile.imwrite(p, np.zeros((20, 20), np.uint8)),
     ["--device", "mps" if torch.cuda.is_available() else "cuda"], "MPS" if torch.cuda.is_available() else "CUDA"),
    (lambda p: tifffile.imwrite(p, np.zeros((20, 20), np.uint8)), ["--device", "tpu"], "not a device name"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, tiny, capsys, make, args, message):
    src = tmp_path / "in.tif"
    make(src)
    argv = ["predict", str(src), "-o", str(tmp_path / "out.tif"), "--model", tiny] + args
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message.lower() in err[-1].lower() and err[-1].startswith("virtual-stain predict: error:")
    assert not (tmp_path / "out.tif").exists()  # nothing half-written


def test_multichannel_file_needs_a_channel_choice(tmp_path, tiny, capsys):
    src = tmp_path / "mc.tif"
    save_tiff(src, np.zeros((3, 20, 20), np.uint8), "CYX", ["DAPI", "BF", "GFP"], None)
    assert main(["predict", str(src), "-o", str(tmp_path / "o.tif"), "--model", tiny]) == 2
    assert "--channel" in capsys.readouterr().err
    assert main(["predict", str(src), "-o", str(tmp_path / "o.tif"), "--model", tiny, "--channel", "BF"]) == 0


def test_tta_flag_writes_the_test_time_augmented_prediction(tmp_path, tiny):
    image = np.random.default_rng(4).random((60, 48)).astype(np.float32)
    src = tmp_path / "in.tif"
    save_tiff(src, image, "YX", [], None)
    outs = {}
    for flag in ([], ["--tta"]):
        out = tmp_path / f"out{len(flag)}.tif"
        assert main(["predict", str(src), "-o", str(out), "--model", tiny, "--device", "cpu", "--precision", "fp32",
                     *flag]) == 0
        outs[bool(flag)] = load_image(out).data
    model, card = load_model(tiny)
    expected = run_stain(Predictor(model, card, device="cpu", precision="fp32"), image, tta=True).data
    np.testing.assert_allclose(outs[True], expected, atol=1e-5)
    assert np.abs(outs[True] - outs[False]).max() > 1e-3


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tif"])
def test_predict_from_an_ome_zarr_pyramid_writes_a_pyramid_with_its_metadata(tmp_path, tiny, suffix):
    from napari_virtual_stain.io.ome_zarr_writer import save_ome_zarr

    image = np.random.default_rng(1).integers(0, 4000, (1, 600, 520)).astype(np.uint16)
    src = save_ome_zarr(tmp_path / "in.ome.zarr", image, "CYX", ["phase"], (0.4, 0.4), n_levels=3)
    out = tmp_path / f"out{suffix}"
    assert main(["predict", str(src), "-o", str(out), "--model", tiny, "--device", "cpu", "--precision", "fp32"]) == 0
    result = load_image(out)
    assert result.channel_names == ["nuclei", "membrane"] and result.pixel_size_um == pytest.approx((0.4, 0.4))
    shapes = [tuple(level.shape)[-2:] for level in result.extra["levels"]]
    assert shapes == [(600, 520), (300, 260), (150, 130)]
    model, card = load_model(tiny)
    expected = run_stain(Predictor(model, card, device="cpu", precision="fp32"), image[0]).data
    np.testing.assert_allclose(np.asarray(result.data).reshape(expected.shape), expected, atol=1e-5)
