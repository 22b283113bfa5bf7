"""`virtual-stain train` end to end on tiny TIFFs."""

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_virtual_stain.cli import main
from napari_virtual_stain.models.checkpoint import load_checkpoint

TINY = ["--arch-args", '{"depth": 2, "base": 4}', "--patch", "32", "--batch-size", "2", "--val-every", "2"]



@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    spots = ndimage.gaussian_filter((rng.random((64, 48)) > 0.98).astype(np.float32), 1.5)
    bf = (ndimage.gaussian_filter(spots, 1) * 500 + 1000 + rng.normal(0, 5, spots.shape)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "bf.tif", bf)
    nuclei = (spots * 4000).astype(np.float32)
    nuclei[:6] = np.nan  # missing pixels
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei)
    tifffile.imwrite(tmp_path / "membrane.tif", ndimage.gaussian_gradient_magnitude(spots, 1).astype(np.float32))
    return tmp_path


def test_train_from_scratch_writes_a_model_that_loads_and_predicts(pair, capsys):
    out = pair / "model.pt"
    code = main(["train", str(pair / "bf.tif"), str(pair / "nuclei.tif"), str(pair / "membrane.tif"),
                 "--arch", "unet", "-o", str(out), "--steps", "4", *TINY])
    assert code == 0
    err = capsys.readouterr().err
    assert "step 4/4" in err and "wrote" in err and "nuclei" in err
    model, card = load_checkpoint(out)
    assert card.input_channels == ["bf"] and card.output_channels == ["nuclei", "membrane"]
    assert card.name == "model" and card.training["steps"] == 4
    assert set(card.scores["validation"]) == {"nuclei", "membrane"}
    assert out.with_suffix(".state.pt").is_file()

    # ... and `predict` accepts it.
    code = main(["predict", str(pair / "bf.tif"), "-o", str(pair / "pred.tif"), "--model", str(out)])
    assert code == 0
    predicted = tifffile.imread(pair / "pred.tif")
    assert predicted.shape == (2, 64, 48) and np.isfinite(predicted).all()

    # Resume continues where the run ended.
    code = main(["train", str(pair / "bf.tif"), str(pair / "nuclei.tif"), str(pair / "membrane.tif"),
                 "-o", str(out), "--resume", "--steps", "6", *TINY])
    assert code == 0
    assert load_checkpoint(out)[1].training["steps"] == 6


def test_fine_tune_with_a_multichannel_target_file(pair, capsys):
    first = pair / "first.pt"
    assert main(["train", str(pair / "bf.tif"), str(pair / "nuclei.tif"), "--arch", "unet", "-o", str(first),
                 "--steps", "2", *TINY]) == 0
    both = np.stack([tifffile.imread(pair / "nuclei.tif"), tifffile.imread(pair / "membrane.tif")])
    tifffile.imwrite(pair / "both.tif", both, imagej=True, metadata={"axes": "CYX", "Labels": ["nuclei", "membrane"]})
    tuned = pair / "tuned.pt"
    assert main(["train", str(pair / "bf.tif"), str(pair / "both.tif"), "--from", str(first), "-o", str(tuned),
                 "--steps", "2", *TINY[2:]]) == 0
    _, card = load_checkpoint(tuned)
    assert card.output_channels == ["nuclei", "membrane"]
    assert "head replaced" in card.training["started_from"]


def test_bad_input_prints_one_sentence_and_exits_2(pair, capsys):
    tifffile.imwrite(pair / "small.tif", np.ones((40, 40), np.float32))
    code = main(["train", str(pair / "bf.tif"), str(pair / "small.tif"), "--arch", "unet", "-o", str(pair / "m.pt"),
                 "--steps", "1", *TINY])
    assert code == 2
    assert "The target layer 'small' is 40x40 but the input is 64x48: pairs must have the same shape" in capsys.readouterr().err
    code = main(["train", str(pair / "bf.tif"), str(pair / "nuclei.tif"), "-o", str(pair / "m.pt")])
    assert code == 2
    assert "--from MODEL" in capsys.readouterr().err
    code = main(["train", str(pair / "bf.tif"), str(pair / "nuclei.tif"), "--arch", "unet", "-o", str(pair / "m.pt"),
                 "--patch", "128", "--steps", "1"])
    assert code == 2
    assert "smaller than the 128x128 training patch" in capsys.readouterr().err


def test_the_command_line_and_the_fine_tune_dock_name_and_cut_alike(tmp_path):
    """One naming of colour channels and one patch rule, whichever door trains the model."""
    from napari_virtual_stain.cli.train import channels_first
    from napari_virtual_stain.training.defaults import patch_for

    tifffile.imwrite(tmp_path / "ihc.tif", np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    _, names, dims = channels_first(str(tmp_path / "ihc.tif"))
    assert names == ["R", "G", "B"] and dims == 2  # as the dock names an RGB layer's channels
    assert patch_for(2, 128) == (128, 128) and patch_for(3, 128) == (16, 64, 64) and patch_for(3, 32) == (8, 16, 16)


def test_one_patch_side_for_a_stack_gives_thin_slabs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "zs.tif", rng.random((12, 40, 40), dtype=np.float32))
    tifffile.imwrite(tmp_path / "t.tif", rng.random((12, 40, 40), dtype=np.float32))
    assert main(["train", str(tmp_path / "zs.tif"), str(tmp_path / "t.tif"), "--arch", "unet", "--arch-args",
                 '{"depth": 1, "base": 2}', "--patch", "32", "--steps", "1", "--device", "cpu",
                 "-o", str(tmp_path / "m.pt")]) == 0
    assert "patch 8x16x16" in capsys.readouterr().err


@pytest.fixture
def focal_series(tmp_path):
    """A 5-plane stack whose planes blur the spots more the further they are from plane 2."""
    rng = np.random.default_rng(1)
    spots = ndimage.gaussian_filter((rng.random((64, 48)) > 0.98).astype(np.float32), 1.5)
    stack = np.stack([ndimage.gaussian_filter(spots, 1 + abs(z - 2)) * 500 + 1000 + rng.normal(0, 5, spots.shape)
                      for z in range(5)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "bf_zyx.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "dapi_yx.tif", (spots * 4000).astype(np.float32))
    tifffile.imwrite(tmp_path / "dapi_zyx.tif", np.repeat(spots[None] * 4000, 5, axis=0).astype(np.float32),
                     imagej=True, metadata={"axes": "ZYX"})
    return tmp_path


def test_train_a_2_5d_model_from_a_stack_and_a_plane_then_predict_a_plane_or_every_plane(focal_series, capsys):
    d = focal_series
    out = d / "m25.pt"
    assert main(["train", str(d / "bf_zyx.tif"), str(d / "dapi_yx.tif"), "--arch", "unet-2.5d", "--planes", "3",
                 "--target-plane", "2", "-o", str(out), "--steps", "2", *TINY]) == 0
    _, card = load_checkpoint(out)
    assert card.spatial_dims == 2 and card.input_channels == ["bf_zyx"]
    assert (card.arch_args["planes"], card.arch_args["centre"]) == (3, 1)
    assert card.training["data"]["z_window"] == {"planes": 3, "centre": 1}

    # Every plane of a deeper stack: ZYX out; a stack of exactly the model's planes: its centre plane, YX.
    assert main(["predict", str(d / "bf_zyx.tif"), "-o", str(d / "all.tif"), "--model", str(out)]) == 0
    every = tifffile.imread(d / "all.tif")
    assert every.shape == (5, 64, 48)
    three = tifffile.imread(d / "bf_zyx.tif")[1:4]
    tifffile.imwrite(d / "three.tif", three, imagej=True, metadata={"axes": "ZYX"})
    assert main(["predict", str(d / "three.tif"), "-o", str(d / "one.tif"), "--model", str(out)]) == 0
    one = tifffile.imread(d / "one.tif")
    assert one.shape == (64, 48)
    from napari_virtual_stain.engine.predictor import Predictor
    model, card = load_checkpoint(out)
    centre = Predictor(model, card, device="cpu").predict(three[None].astype(np.float32))[0, 1]
    np.testing.assert_allclose(one, centre, atol=1e-5)
    assert np.abs(one - every[2]).max() > 0  # (normalised over 3 planes here, over 5 above)

    # Two planes are not enough for it.
    tifffile.imwrite(d / "two.tif", three[:2], imagej=True, metadata={"axes": "ZYX"})
    assert main(["predict", str(d / "two.tif"), "-o", str(d / "no.tif"), "--model", str(out)]) == 2
    assert "needs 3 planes" in capsys.readouterr().err and not (d / "no.tif").exists()


def test_train_a_2_5d_model_on_a_target_stack_uses_every_plane_with_a_whole_window(focal_series, capsys):
    d = focal_series
    out = d / "m25z.pt"
    assert main(["train", str(d / "bf_zyx.tif"), str(d / "dapi_zyx.tif"), "--arch", "unet-2.5d", "--planes", "3",
                 "-o", str(out), "--steps", "2", *TINY]) == 0
    _, card = load_checkpoint(out)
    assert card.training["data"]["pairs"] == 3  # planes 1, 2 and 3
    # Fine-tuning it keeps its window; a target plane outside what the window allows is refused.
    assert main(["train", str(d / "bf_zyx.tif"), str(d / "dapi_yx.tif"), "--from", str(out), "--target-plane", "0",
                 "-o", str(d / "ft.pt"), "--steps", "1", *TINY[2:]]) == 2
    assert "plane 0 of 'bf_zyx' does not have them" in capsys.readouterr().err


def test_planes_without_a_2_5d_model_is_refused(pair, capsys):
    assert main(["train", str(pair / "bf.tif"), str(pair / "nuclei.tif"), "--arch", "unet", "--planes", "3",
                 "-o", str(pair / "m.pt"), *TINY]) == 2
    assert "--arch unet-2.5d" in capsys.readouterr().err
