"""The staining workflow object: one set of settings for the dock and the command line."""

import numpy as np

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.workflows import stain as workflow
from napari_virtual_stain.workflows.settings_files import settings_file
from napari_virtual_stain.workflows.stain import StainSettings

from conftest import save_tiny_model


def test_problems_are_sentences_found_without_building_a_network(user_models):
    save_tiny_model(user_models, name="tiny-2d")
    assert StainSettings(model="tiny-2d", device="cpu").problems() == []
    assert "no model called 'nope'" in StainSettings(model="nope").problems()[0]
    assert "fp16 is not useful on the CPU" in StainSettings(model="tiny-2d", device="cpu", precision="fp16").problems()[0]
    assert "needs 2 numbers" in StainSettings(model="tiny-2d", tile=(32, 32, 32)).problems()[0]
    assert StainSettings(model="").problems() == ["Choose a model."]


def test_settings_are_remembered_and_junk_is_forgotten(user_models, tmp_path):
    path = settings_file("stain")
    StainSettings(model="tiny-2d", device="cpu", precision="fp32", tile=(64, 64)).save(path)
    loaded = StainSettings.load(path)
    assert (loaded.model, loaded.device, loaded.precision, loaded.tile) == ("tiny-2d", "cpu", "fp32", (64, 64))
    path.write_text("{not json")
    assert StainSettings.load(path) == StainSettings()
    path.write_text('{"model": "x", "unknown_key": 1}')
    assert StainSettings.load(path).model == "x"


def test_settings_are_evented_so_a_dock_can_follow_them():
    settings, seen = StainSettings(), []
    settings.events.precision.connect(seen.append)
    settings.precision = "fp32"
    assert seen == ["fp32"]


def test_the_command_line_and_the_workflow_give_the_same_result(user_models, tmp_path):
    save_tiny_model(user_models, name="tiny-2d")
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", image)
    assert main(["predict", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), "--model", "tiny-2d",
                 "--device", "cpu", "--precision", "fp32", "--tile", "32", "--overlap", "8"]) == 0
    settings = StainSettings(model="tiny-2d", device="cpu", precision="fp32", tile=(32,), overlap=(8,))
    result = workflow.run(settings, image)
    np.testing.assert_array_equal(load_image(tmp_path / "out.tif").data, result.data)
