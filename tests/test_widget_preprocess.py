"""The Preprocess dock, driven as a user would: dock, choose, click, wait, check the new layers."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.errors import check_cancel
from napari_virtual_stain.preprocess import correct_flatfield, plls_scores
from napari_virtual_stain.widgets import _worker
from napari_virtual_stain.workflows import preprocess as preprocess_workflow
from napari_virtual_stain.widgets.preprocess_widget import PreprocessWidget

TILE = 16


@pytest.fixture
def dock(make_napari_viewer, monkeypatch):
    messages = []
    monkeypatch.setattr(_worker, "show_error", messages.append)
    monkeypatch.setattr(_worker, "show_info", messages.append)
    viewer = make_napari_viewer()
    widget = PreprocessWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.messages = messages
    return viewer, widget


def click_and_wait(widget, button, qtbot):
    button.native.click()
    # a refused click starts no job at all
    qtbot.waitUntil(lambda: (widget.job is None or not widget.job.running) and widget.tile_run.enabled,
                    timeout=30000)


def mosaic():
    """(48, 56) grey mosaic of 16x16 tiles (56 = 3.5 tiles), tissue in the left half, a known shadow."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:TILE, 0:TILE]
    shadow = -30.0 * np.exp(-((y - 2) ** 2) / 6.0)
    shadow -= shadow.mean()
    clean = 500.0 + rng.normal(0, 1.0, (48, 56))
    clean[:, :24] += 300 * rng.random((48, 24))
    image = clean + np.tile(shadow, (3, 4))[:48, :56]
    return clean, image.astype(np.uint16), shadow


def test_tile_shadow_adds_corrected_and_artifact_layers(dock, qtbot):
    viewer, widget = dock
    clean, image, shadow = mosaic()
    layer = viewer.add_image(image.copy(), name="bf", scale=(0.5, 0.5), translate=(10, 20))
    widget.reset_choices()
    widget.input.value, widget.tile.value, widget.n_empty.value = "bf", TILE, 3
    click_and_wait(widget, widget.tile_run, qtbot)
    corrected = viewer.layers["bf · shadow-corrected"]
    artifact = viewer.layers["bf · artifact estimate"]
    assert corrected.data.dtype == np.uint16 and corrected.data.shape == image.shape
    assert tuple(corrected.scale) == (0.5, 0.5) and tuple(corrected.translate) == (10, 20)
    assert np.std(corrected.data[:, 32:].astype(float) - clean[:, 32:]) < 1.5 < np.std(image[:, 32:] - clean[:, 32:])
    assert artifact.data.shape == (TILE, TILE)
    assert np.abs(artifact.data - artifact.data.mean() - shadow).max() < 2.5
    assert all(c >= 2 for _, c in corrected.metadata["tiles"])  # tissue-free tiles only
    np.testing.assert_array_equal(layer.data, image)  # input untouched
    assert widget.progress.value == widget.progress.max
    # a second run updates the same layers instead of piling up new ones
    n_layers = len(viewer.layers)
    click_and_wait(widget, widget.tile_run, qtbot)
    assert len(viewer.layers) == n_layers and viewer.layers["bf · shadow-corrected"] is corrected


def test_tiles_picked_with_a_points_layer(dock, qtbot):
    viewer, widget = dock
    _, image, _ = mosaic()
    viewer.add_image(image, name="bf", scale=(2.0, 2.0))
    # at scale 2, tile (row, col) spans world y 32*row..32*row+32 and x 32*col..32*col+32
    viewer.add_points(np.array([[10.0, 70.0], [70.0, 80.0], [75.0, 90.0]]), name="empty")
    widget.reset_choices()
    widget.input.value, widget.tile.value = "bf", TILE
    widget.tile_source.value = "tiles under points: empty"
    click_and_wait(widget, widget.tile_run, qtbot)
    out = viewer.layers["bf · shadow-corrected"]
    assert [tuple(t) for t in out.metadata["tiles"]] == [(0, 2), (2, 2)]
    # a point on the partial last column is refused with a sentence, not a traceback
    viewer.layers["empty"].add([[10.0, 100.0]])
    click_and_wait(widget, widget.tile_run, qtbot)
    assert any("Tile (0, 3) is not a complete tile" in m for m in widget.messages)


def test_flatfield_layer_matches_the_core_function(dock, qtbot):
    viewer, widget = dock
    y, x = np.mgrid[0:40, 0:50]
    image = ((1.0 - 0.4 * x / 50) * (800 + 100 * np.random.default_rng(1).random((40, 50)))).astype(np.float32)
    viewer.add_image(image, name="wf")
    widget.reset_choices()
    widget.input.value, widget.sigma.value = "wf", 6.0
    click_and_wait(widget, widget.flat_run, qtbot)
    out = viewer.layers["wf · flat-field corrected"].data
    np.testing.assert_allclose(out, correct_flatfield(image, sigma=6.0).corrected, rtol=1e-6)


def test_focus_keeps_best_planes_and_plots_scores(dock, qtbot):
    viewer, widget = dock
    rng = np.random.default_rng(2)
    sharp = np.zeros((64, 64))
    sharp.flat[rng.integers(0, 64 * 64, 50)] = 1.0
    sharp = ndi.gaussian_filter(sharp, 1.0)
    stack = np.stack([ndi.gaussian_filter(sharp, 0.01 + 1.5 * abs(z - 4)) for z in range(7)]).astype(np.float32)
    viewer.add_image(stack, name="z", scale=(2.0, 0.5, 0.5), translate=(100.0, 0.0, 0.0))
    widget.reset_choices()
    widget.input.value, widget.keep.value = "z", 3
    click_and_wait(widget, widget.focus_run, qtbot)
    out = viewer.layers["z · in-focus planes"]
    np.testing.assert_array_equal(out.data, stack[3:6])
    assert tuple(out.scale) == (2.0, 0.5, 0.5) and tuple(out.translate) == (106.0, 0.0, 0.0)
    np.testing.assert_allclose([y for _, y in widget.plot.series["PLLS"]], plls_scores(stack))
    assert widget.plot.highlighted["PLLS"] == {3, 4, 5}


def test_outputs_keep_the_inputs_rotation_shear_and_affine(dock, qtbot):
    """A rotated, sheared, affine-transformed input: every output pixel lies on its input pixel
    (kept planes on theirs), not on the input's scale and translate alone."""
    viewer, widget = dock
    rng = np.random.default_rng(3)
    sharp = ndi.gaussian_filter((rng.random((40, 40)) > 0.97).astype(np.float32), 1.0)
    stack = np.stack([ndi.gaussian_filter(sharp, 0.01 + 1.5 * abs(z - 3)) for z in range(6)]).astype(np.float32)
    affine = np.eye(4)
    affine[1, 2], affine[:3, 3] = 0.3, (1.0, -4.0, 7.0)
    layer = viewer.add_image(stack, name="z", scale=(2.0, 0.5, 0.75), translate=(10.0, 3.0, -2.0),
                             rotate=((1, 0, 0), (0, 0.8, -0.6), (0, 0.6, 0.8)), shear=(0.1, 0.0, 0.2), affine=affine)
    widget.reset_choices()
    widget.input.value, widget.keep.value, widget.sigma.value = "z", 2, 6.0
    click_and_wait(widget, widget.focus_run, qtbot)
    click_and_wait(widget, widget.flat_run, qtbot)
    kept = viewer.layers["z · in-focus planes"]
    first = kept.metadata["kept_planes"][0]
    flat = viewer.layers["z · flat-field corrected"]
    for point in ([0, 0, 0], [1, 5, 9], [1, 39, 0], [0, 17, 33]):
        p = np.asarray(point, dtype=float)
        np.testing.assert_allclose(flat.data_to_world(p), layer.data_to_world(p), atol=1e-9)
        np.testing.assert_allclose(kept.data_to_world(p), layer.data_to_world(p + [first, 0, 0]), atol=1e-9)


def test_normalise_records_the_statistics(dock, qtbot):
    viewer, widget = dock
    image = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)
    viewer.add_image(image, name="m")
    widget.reset_choices()
    widget.input.value, widget.low.value, widget.high.value = "m", 0.0, 100.0
    click_and_wait(widget, widget.norm_run, qtbot)
    out = viewer.layers["m · normalised"]
    assert out.data.min() == 0.0 and out.data.max() == pytest.approx(1.0)
    stats = out.metadata["normalisation"]["stats"]
    assert stats["low"] == [0.0] and stats["high"] == [9999.0]


def test_user_errors_become_notifications(dock, qtbot):
    viewer, widget = dock
    viewer.add_image(np.random.default_rng(3).random((40, 40)).astype(np.float32), name="plane")
    widget.reset_choices()
    widget.input.value = "plane"
    click_and_wait(widget, widget.focus_run, qtbot)
    assert any("single plane" in m for m in widget.messages)
    widget.tile.value = 30  # 40 is not a multiple of 30
    widget.strict.value = True
    click_and_wait(widget, widget.tile_run, qtbot)
    assert any("does not divide" in m for m in widget.messages)
    assert [layer.name for layer in viewer.layers] == ["plane"]  # nothing half-made


def test_cancel_stops_the_run_and_adds_no_layer(dock, qtbot, monkeypatch):
    viewer, widget = dock

    def slow_selection(stack, progress=None, cancel=None, **kwargs):
        progress(1, 10)
        cancel.wait(20)  # stands in for a long stack: returns as soon as Cancel is clicked
        check_cancel(cancel)
        raise AssertionError("the run should have been cancelled")

    monkeypatch.setattr(preprocess_workflow, "select_in_focus", slow_selection)
    viewer.add_image(np.random.default_rng(4).random((3, 32, 32)).astype(np.float32), name="z")
    widget.reset_choices()
    widget.input.value = "z"
    widget.focus_run.native.click()
    qtbot.waitUntil(lambda: widget.progress.value == 1, timeout=10000)
    assert not widget.focus_run.enabled and widget.cancel_button.enabled
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.job.running and widget.focus_run.enabled, timeout=10000)
    assert widget.messages == ["Focus selection cancelled."]
    assert [layer.name for layer in viewer.layers] == ["z"]


def test_a_button_is_disabled_with_the_reason_and_the_state_is_shown(dock, qtbot):
    viewer, widget = dock
    viewer.add_image(np.arange(40 * 40, dtype=np.uint16).reshape(40, 40), name="m")
    widget.reset_choices()
    widget.input.value = "m"
    widget.low.value, widget.high.value = 60.0, 40.0
    assert not widget.norm_run.enabled and "low < high" in widget.norm_run.tooltip
    assert widget.flat_run.enabled  # the other sections are not held back
    widget.high.value = 99.0
    assert widget.norm_run.enabled and widget.settings["normalise"].low == 60.0
    click_and_wait(widget, widget.norm_run, qtbot)
    assert widget.run_state_label.value == "state: done"
    again = PreprocessWidget(viewer)  # a new launch remembers what ran
    assert (again.low.value, again.high.value) == (60.0, 99.0)
