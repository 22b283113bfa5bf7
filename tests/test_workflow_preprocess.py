"""The preprocessing workflows: one set of settings and one colour/channel rule for the dock and the commands."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.cli import main
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.workflows import preprocess as workflow
from napari_virtual_stain.workflows.preprocess import (FlatFieldSettings, FocusSettings, NormaliseSettings,
                                                       TileShadowSettings, layer_axes)
from napari_virtual_stain.workflows.settings_files import settings_file


def colour_mosaic():
    rng = np.random.default_rng(0)
    y, _ = np.mgrid[0:16, 0:16]
    shadow = -30.0 * np.exp(-((y - 2) ** 2) / 6.0)
    image = 120 + rng.normal(0, 1.0, (48, 64, 3)) + np.tile(shadow, (3, 4))[..., None] * [1.0, 0.5, 0.2]
    image[:, :24] += 100 * rng.random((48, 24, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_problems_are_sentences():
    assert all(cls().problems() == [] for cls in (TileShadowSettings, FlatFieldSettings, FocusSettings,
                                                   NormaliseSettings))
    assert "low < high" in NormaliseSettings(low=50, high=10).problems()[0]
    assert "not both" in FocusSettings(keep=2, min_score=1.0).problems()[0]
    assert "at least 2 pixels" in TileShadowSettings(tile=(1,)).problems()[0]
    assert "must be positive" in FlatFieldSettings(sigma=0).problems()[0]
    with pytest.raises(InputError, match="is a single plane"):
        workflow.run(FocusSettings(), np.ones((8, 8), np.float32), "YX", name="plane")


def test_settings_are_remembered():
    path = settings_file("preprocess-tile-shadow")
    TileShadowSettings(tile=(16, 20), n_empty=3, criterion="dark").save(path)
    loaded = TileShadowSettings.load(path)
    assert (loaded.tile, loaded.n_empty, loaded.criterion) == ((16, 20), 3, "dark")


def test_layers_name_their_axes_as_files_do():
    assert [layer_axes(n, False) for n in (2, 3, 4)] == ["YX", "ZYX", "CZYX"]
    assert [layer_axes(n, True) for n in (3, 4)] == ["YXS", "ZYXS"]


@pytest.mark.parametrize("command, settings, what", [
    (["tile-shadow", "--tile", "16", "--n-empty", "3"], TileShadowSettings(tile=(16,), n_empty=3), workflow.CORRECTED),
    (["normalise", "--low", "1", "--high", "99"], NormaliseSettings(low=1, high=99), workflow.NORMALISED),
    (["flatfield", "--sigma", "6"], FlatFieldSettings(sigma=6.0), workflow.FLAT),
])
def test_a_colour_image_gives_the_same_result_through_the_dock_and_the_command_line(tmp_path, command, settings,
                                                                                   what):
    """A colour layer (Y, X, 3) and a colour file (YXS) are corrected alike: no clipping or casting of
    their own in the dock (its normalised colours were clipped to [0, 1] before)."""
    rgb = colour_mosaic()
    save_tiff(tmp_path / "rgb.tif", rgb, "YXS")
    assert main([command[0], str(tmp_path / "rgb.tif"), "-o", str(tmp_path / "out.tif"), *command[1:]]) == 0
    from_file = load_image(tmp_path / "out.tif")
    from_layer = workflow.run(settings, rgb, layer_axes(rgb.ndim, True)).outputs[what]
    assert from_file.axes == "YXS" and from_file.data.dtype == from_layer.dtype
    np.testing.assert_array_equal(from_file.data, from_layer)
    if what == workflow.NORMALISED:
        assert from_layer.max() > 1.0  # percentiles 1..99: the brightest pixels stay above 1 unless clipped


def test_results_become_layers_on_the_input_grid():
    rng = np.random.default_rng(2)
    sharp = ndi.gaussian_filter((rng.random((48, 48)) > 0.98).astype(np.float32), 1.0)
    stack = np.stack([ndi.gaussian_filter(sharp, 0.01 + 1.5 * abs(z - 3)) for z in range(6)])
    result = workflow.run(FocusSettings(keep=2), stack, "ZYX", name="z")
    (data, kwargs, kind), = result.layer_tuples("z", (2.0, 0.5, 0.5), (100.0, 0.0, 0.0))
    assert kind == "image" and kwargs["name"] == "z · in-focus planes" and data.shape == (2, 48, 48)
    assert kwargs["translate"][0] == 100.0 + 2.0 * result.info["kept_planes"][0]
    rgb = colour_mosaic()
    tuples = workflow.run(TileShadowSettings(tile=(16,)), rgb, "YXS").layer_tuples("rgb", (1, 1), (0, 0))
    artifact = next(d for d, k, _ in tuples if k["name"] == "rgb · artifact estimate")
    assert artifact.dtype == np.uint8 and artifact.shape == (16, 16, 3)  # shown as colour, as the input
