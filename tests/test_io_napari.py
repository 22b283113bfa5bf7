"""The reader's and the samples' layer data tuples in a real napari viewer (needs Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_virtual_stain.errors import ReaderError
from napari_virtual_stain.io import sample_data
from napari_virtual_stain.io.napari_reader import read_tiff
from napari_virtual_stain.io.tiff_writer import save_tiff

pytestmark = pytest.mark.gui


def add_tuples(viewer, layers):
    """What napari does with a reader's or sample's layer data tuples."""
    added = []
    for data, kwargs, kind in layers:
        result = getattr(viewer, f"add_{kind}")(data, **kwargs)
        added.extend(result if isinstance(result, list) else [result])
    return added


def test_reader_layers_in_the_viewer(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    stack = save_tiff(tmp_path / "stack.tif", rng.random((2, 3, 16, 20)).astype(np.float32), "CZYX",
                      ["DAPI", "GFP"], (2.0, 0.5, 0.5))
    rgb = save_tiff(tmp_path / "he.tif", rng.integers(0, 255, (16, 20, 3), dtype=np.uint8), "YXS")
    viewer = make_napari_viewer()
    layers = add_tuples(viewer, read_tiff([str(stack), str(rgb)]))
    assert [layer.name for layer in layers] == ["DAPI", "GFP", "he"]
    dapi, gfp, he = layers
    assert dapi.data.shape == (3, 16, 20) and tuple(dapi.scale) == pytest.approx((2.0, 0.5, 0.5))
    assert dapi.metadata["channel_name"] == "DAPI" and gfp.metadata["source_path"] == str(stack)
    assert he.rgb and he.data.shape == (16, 20, 3)


@pytest.mark.parametrize("name", ["sample_label_free_2d", "sample_ihc", "sample_multiplex"])
def test_samples_open_in_the_viewer(make_napari_viewer, name):
    viewer = make_napari_viewer()
    layers = add_tuples(viewer, getattr(sample_data, name)())
    assert len(viewer.layers) == len(layers) >= 2
    assert any(layer.visible for layer in layers)
    hidden = [layer.name for layer in layers if not layer.visible]
    assert hidden and all("(truth)" in n for n in hidden)


def test_drag_and_drop_through_the_plugin(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(1)
    path = save_tiff(tmp_path / "markers.ome.tif", rng.random((3, 12, 14)).astype(np.float32), "CYX",
                     ["DAPI", "CD3", "CD45"], (0.4, 0.4))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-virtual-stain")
    assert [layer.name for layer in viewer.layers] == ["DAPI", "CD3", "CD45"]
    assert tuple(viewer.layers["CD3"].scale) == pytest.approx((0.4, 0.4))


def test_a_bad_file_reaches_the_user_as_our_sentence(make_napari_viewer, tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not an image")
    viewer = make_napari_viewer()
    with pytest.raises(ReaderError, match=r"^notes\.tif is not a TIFF file"):
        viewer.open(str(path), plugin="napari-virtual-stain")
    assert len(viewer.layers) == 0


def test_open_sample_through_the_plugin(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-virtual-stain", "label_free_2d")
    assert "brightfield" in viewer.layers and not viewer.layers["nuclei (truth)"].visible
