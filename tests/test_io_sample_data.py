"""Sample data for File > Open Sample: proper, deterministic layer data tuples."""

from __future__ import annotations

import numpy as np
import pytest

from napari_virtual_stain.io import sample_data
from napari_virtual_stain.io.synthetic import MULTIPLEX_CHANNELS

SAMPLES = ["sample_label_free_2d", "sample_label_free_3d", "sample_ihc", "sample_multiplex", "sample_skimage_ihc"]


@pytest.fixture(scope="module")
def samples():
    return {name: getattr(sample_data, name)() for name in SAMPLES}


def by_name(layers):
    out = {}
    for data, kwargs, kind in layers:
        names = kwargs["name"] if isinstance(kwargs["name"], list) else [kwargs["name"]]
        for n in names:
            out[n] = (data, kwargs, kind)
    return out


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_is_a_list_of_layer_data_tuples(samples, name):
    layers = samples[name]
    assert isinstance(layers, list) and layers
    for layer in layers:
        assert isinstance(layer, tuple) and len(layer) == 3
        data, kwargs, kind = layer
        assert kind in ("image", "labels") and isinstance(kwargs, dict) and "name" in kwargs
        assert np.asarray(data).size > 0
        if kind == "labels":
            assert np.issubdtype(np.asarray(data).dtype, np.integer)


@pytest.mark.parametrize("name, shape, scale", [
    ("sample_label_free_2d", (256, 256), (0.65, 0.65)),
    ("sample_label_free_3d", (32, 256, 256), (1.0, 0.65, 0.65)),
])
def test_label_free_samples_show_the_input_and_hide_the_truth(samples, name, shape, scale):
    layers = by_name(samples[name])
    assert set(layers) == {"brightfield", "nuclei (truth)", "membrane (truth)", "cells (truth)"}
    brightfield, kwargs, _ = layers["brightfield"]
    assert brightfield.shape == shape and brightfield.dtype == np.float32
    assert kwargs.get("visible", True) and kwargs["scale"] == pytest.approx(scale)
    for truth in ("nuclei (truth)", "membrane (truth)", "cells (truth)"):
        data, kw, _ = layers[truth]
        assert data.shape == shape and kw["visible"] is False and kw["scale"] == pytest.approx(scale)
    assert layers["nuclei (truth)"][1]["metadata"]["channel_name"] == "nuclei"
    assert layers["brightfield"][1]["metadata"]["seed"] == sample_data.SEED


def test_ihc_sample_is_rgb_with_hidden_modalities(samples):
    layers = by_name(samples["sample_ihc"])
    rgb, kwargs, _ = layers["IHC (Ki67)"]
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8 and kwargs["rgb"] is True
    for key in ("hematoxylin", "dapi", "lap2", "marker"):
        data, kw, kind = layers[f"{key} (truth)"]
        assert kind == "image" and data.shape == (512, 512) and kw["visible"] is False
    classes = layers["classes (truth)"][0]
    assert set(np.unique(classes)) == {0, 1, 2}
    nuclei = layers["nuclei (truth)"][0]
    np.testing.assert_array_equal(classes > 0, nuclei > 0)


def test_multiplex_sample_is_one_layer_per_marker(samples):
    (image, kwargs, kind), (cells, cell_kwargs, cell_kind) = samples["sample_multiplex"]
    assert kind == "image" and kwargs["channel_axis"] == 0
    assert kwargs["name"] == MULTIPLEX_CHANNELS and image.shape == (len(MULTIPLEX_CHANNELS), 512, 512)
    assert len(kwargs["contrast_limits"]) == len(MULTIPLEX_CHANNELS) == len(kwargs["metadata"])
    # sparse counts are shown up to a high percentile, below the brightest pixel
    assert all(0 < hi <= image[c].max() for c, (lo, hi) in enumerate(kwargs["contrast_limits"]))
    assert cell_kind == "labels" and cells.shape == (512, 512) and cell_kwargs["visible"] is False
    assert len(cell_kwargs["metadata"]["cell_types"]) == cells.max() + 1


def test_skimage_ihc_is_the_real_image(samples):
    (rgb, kwargs, kind), = samples["sample_skimage_ihc"]
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8 and kwargs["rgb"] is True
    assert kwargs["metadata"]["synthetic"] is False


def test_samples_are_deterministic(samples):
    again = sample_data.sample_label_free_2d()
    for (a, _, _), (b, _, _) in zip(samples["sample_label_free_2d"], again):
        np.testing.assert_array_equal(a, b)


def _sample_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("make_sample_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path.parents[1] / "sample_data"


def _assert_same_up_to_rounding(committed: np.ndarray, regenerated: np.ndarray, what: str) -> None:
    """The generator is floating point (FFT optics, Beer-Lambert exponentials): another CPU, BLAS or
    numpy may round a value that sits on a .5 boundary the other way. Tolerated: one grey level on
    at most 0.1% of the pixels. A changed generator moves far more pixels by far more."""
    assert committed.shape == regenerated.shape and committed.dtype == regenerated.dtype, what
    diff = np.abs(committed.astype(np.int64) - regenerated.astype(np.int64))
    assert diff.max() <= 1, f"{what}: a pixel differs by {diff.max()} grey levels"
    assert np.count_nonzero(diff) <= 1e-3 * diff.size, f"{what}: {np.count_nonzero(diff)} pixels differ"


def test_committed_sample_files_match_the_generator():
    """If this fails, the generator changed: run `python scripts/make_sample_data.py`."""
    from napari_virtual_stain.io.synthetic import make_cells_2d, make_ihc
    from napari_virtual_stain.io.tiff_reader import load_image

    script, folder = _sample_script()
    committed = load_image(folder / "label_free_2d.tif")
    assert committed.channel_names == ["brightfield", "nuclei", "membrane"]
    assert committed.pixel_size_um == pytest.approx((0.65, 0.65))
    cells = make_cells_2d((256, 256), seed=script.SEED)
    _assert_same_up_to_rounding(committed.data[0], script.to_uint(cells["brightfield"], np.uint16), "brightfield")
    _assert_same_up_to_rounding(load_image(folder / "ihc.tif").data, make_ihc((512, 512), seed=script.SEED)["rgb"], "IHC")
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < script.MAX_TOTAL_BYTES


def test_the_rounding_tolerance_still_catches_a_changed_generator():
    from napari_virtual_stain.io.synthetic import make_ihc

    script, _ = _sample_script()
    same = make_ihc((128, 128), seed=script.SEED)["rgb"]
    other = make_ihc((128, 128), seed=script.SEED + 1)["rgb"]
    with pytest.raises(AssertionError):
        _assert_same_up_to_rounding(same, other, "IHC of another seed")
