"""The docks under Xvfb when the user does something awkward mid-run (hardening issue, items 4 and 7).

Cancel inside one long forward pass; closing a dock, its panel or the viewer during a run;
deleting the input layer during a run; Preprocess focus selection on a layer it cannot use;
Fine-tune Save under a bad or an existing name; a tiny layer on screen. Each test checks the
sentence shown, that nothing was published or written, and that the input is unchanged.
"""

import gc
import time
import weakref

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_virtual_stain.models.registry import load_model
from napari_virtual_stain.widgets import finetune_widget, stain_widget
from napari_virtual_stain.widgets.finetune_widget import FineTuneWidget
from napari_virtual_stain.widgets.preprocess_widget import PreprocessWidget
from napari_virtual_stain.widgets.stain_widget import CURRENT_VIEW, WHOLE, VirtualStainWidget

from conftest import save_tiny_model

N_LAYERS = 80


class SlowLayer(torch.nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x):
        self.calls.append(1)
        time.sleep(0.02)  # 80 layers: one pass of one tile takes about 1.6 s
        return torch.tanh(self.conv(x))


class SlowNet(torch.nn.Module):
    """One tile is one long forward pass; ``calls`` counts the layers that ran."""

    def __init__(self):
        super().__init__()
        self.calls: list = []
        self.head = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.body = torch.nn.Sequential(*[SlowLayer(self.calls) for _ in range(N_LAYERS)])

    def forward(self, x):
        return torch.sigmoid(self.body(self.head(x)))



@pytest.fixture
def stain(make_napari_viewer, user_models, monkeypatch, messages):
    """A Virtual Stain dock whose model 'tiny-2d' is the slow network; a 32x32 input is one tile."""
    save_tiny_model(user_models, name="tiny-2d")
    net = SlowNet()
    _, card = load_model("tiny-2d")
    monkeypatch.setattr(stain_widget, "load_model", lambda name: (net, card))
    viewer = make_napari_viewer()
    widget = VirtualStainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    data = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    viewer.add_image(data.copy(), name="bf")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", WHOLE
    widget.device.value, widget.precision.value = "cpu", "fp32"
    return viewer, widget, net, data


def start_and_wait_for_layers(widget, net, qtbot, n=3):
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: len(net.calls) >= n, timeout=30000)


def wait_worker(widget, qtbot):
    qtbot.waitUntil(lambda: not widget.job.running, timeout=30000)
    qtbot.wait(50)  # let the queued result/error/finished signals arrive


def no_overlays(viewer):
    return [layer.name for layer in viewer.layers if "·" in layer.name] == []


# -- item 4: Cancel inside one forward pass ------------------------------------------------------

def test_cancel_during_one_long_forward_pass_stops_within_a_few_layers(stain, qtbot, messages):
    viewer, widget, net, data = stain
    assert widget.run_state == "idle"
    start_and_wait_for_layers(widget, net, qtbot)
    assert widget.run_state == "running"
    widget.cancel_button.native.click()
    assert widget.run_state == "cancelling"  # at once, before the worker has noticed
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)
    assert widget.run_state == "cancelled"
    assert len(net.calls) < N_LAYERS // 2  # stopped inside the pass, not at its end
    assert "Virtual staining cancelled." in messages
    assert no_overlays(viewer) and not widget.cancel_button.enabled
    np.testing.assert_array_equal(viewer.layers["bf"].data, data)
    # the model is usable again: the next run goes through every layer and publishes
    net.calls.clear()
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: "bf · nuclei" in viewer.layers, timeout=60000)
    assert len(net.calls) == N_LAYERS
    qtbot.waitUntil(lambda: widget.run_state == "done", timeout=30000)


# -- item 7: closing docks and viewers, deleting layers ---------------------------------------------

def test_removing_the_dock_during_a_run_cancels_it_and_publishes_nothing(stain, qtbot, messages):
    viewer, widget, net, data = stain
    start_and_wait_for_layers(widget, net, qtbot)
    viewer.window.remove_dock_widget(widget)
    assert widget.job.cancel_event.is_set()  # at once, not when the run ends
    wait_worker(widget, qtbot)
    assert len(net.calls) < N_LAYERS // 2
    assert no_overlays(viewer) and messages == []  # nothing delivered to a closed dock
    viewer.add_image(np.zeros((4, 4), np.float32), name="later")  # the viewer goes on working
    np.testing.assert_array_equal(viewer.layers["bf"].data, data)


def test_a_deleted_dock_widget_is_never_touched_again(stain, qtbot, messages):
    viewer, widget, net, _ = stain
    start_and_wait_for_layers(widget, net, qtbot)
    job = widget.job
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    qtbot.wait(50)
    assert no_overlays(viewer) and messages == []
    viewer.add_image(np.zeros((4, 4), np.float32), name="later")


def test_hiding_the_panel_during_a_run_cancels_it_and_says_so(stain, qtbot, messages):
    viewer, widget, net, _ = stain
    start_and_wait_for_layers(widget, net, qtbot)
    widget.parent().close()  # the panel's "hide this panel" button
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)
    assert len(net.calls) < N_LAYERS // 2
    assert messages == ["Virtual staining stopped: its panel was closed."]
    assert no_overlays(viewer)


def test_closing_the_viewer_during_a_run_cancels_it_and_raises_nothing(stain, qtbot, messages):
    viewer, widget, net, _ = stain
    start_and_wait_for_layers(widget, net, qtbot)
    job = widget.job
    viewer.close()
    assert job.cancel_event.is_set()
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    qtbot.wait(100)  # an exception in a late handler would fail the test here (pytest-qt)
    assert len(net.calls) < N_LAYERS // 2
    assert messages == [] and len(viewer.layers) == 0


def test_closing_the_main_window_during_a_run_cancels_it_and_keeps_the_layers(stain, qtbot, messages):
    viewer, widget, net, data = stain
    start_and_wait_for_layers(widget, net, qtbot)
    job = widget.job
    window = viewer.window._qt_window
    window.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)  # napari's own teardown needs it later
    window.close()  # the window alone: the layers stay in the viewer model
    assert job.cancel_event.is_set()
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    qtbot.wait(100)
    assert len(net.calls) < N_LAYERS // 2
    assert messages == [] and [layer.name for layer in viewer.layers] == ["bf"]
    np.testing.assert_array_equal(viewer.layers["bf"].data, data)


def test_deleting_the_input_layer_during_a_run_stops_it_and_recreates_nothing(stain, qtbot, messages):
    viewer, widget, net, _ = stain
    start_and_wait_for_layers(widget, net, qtbot)
    viewer.layers.remove("bf")
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)
    assert len(net.calls) < N_LAYERS // 2
    assert messages == ["Virtual staining stopped: its input layer 'bf' was removed from the viewer, "
                        "so nothing was added."]
    assert len(viewer.layers) == 0


def test_a_result_that_arrives_after_its_input_layer_was_deleted_is_dropped(stain, qtbot, messages):
    viewer, widget, net, _ = stain
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=60000)  # finished; result may still be queued
    job = widget.job
    job.settled = False  # as if the result had not yet reached the UI thread
    viewer.layers.remove("bf")
    job._returned(object())  # the queued result arrives now
    assert messages[-1].startswith("Virtual staining stopped: its input layer 'bf' was removed")
    assert all(layer.name != "bf" for layer in viewer.layers)


# -- item 7: Preprocess on a layer it cannot use -----------------------------------------------------

@pytest.fixture
def preprocess(make_napari_viewer, messages):
    viewer = make_napari_viewer()
    widget = PreprocessWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def test_score_planes_on_an_rgb_layer_is_refused_at_once_with_the_status_updated(preprocess, messages):
    viewer, widget = preprocess
    rgb = np.random.default_rng(1).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    viewer.add_image(rgb.copy(), name="photo", rgb=True)
    widget.reset_choices()
    widget.input.value = "photo"
    widget.focus_run.native.click()
    sentence = "Focus selection needs a z-stack, but 'photo' is a single RGB plane (32x40): choose a (Z, Y, X) stack."
    assert messages == [sentence]
    assert widget.job is None and widget.focus_run.enabled  # nothing started
    assert widget.info.value == f"Focus selection not started: {sentence}"
    assert [layer.name for layer in viewer.layers] == ["photo"]
    np.testing.assert_array_equal(viewer.layers["photo"].data, rgb)


def test_a_late_preprocess_error_leaves_a_status_that_says_so(preprocess, qtbot, messages):
    viewer, widget = preprocess
    viewer.add_image(np.full((3, 16, 16), 7, np.uint16), name="flat")  # a constant stack: refused in the core
    widget.reset_choices()
    widget.input.value = "flat"
    widget.focus_run.native.click()
    qtbot.waitUntil(lambda: not widget.job.running and widget.focus_run.enabled, timeout=30000)
    assert any("is constant" in m for m in messages)
    assert widget.info.value.startswith("Focus selection of 'flat' failed: The z-stack is constant")
    assert [layer.name for layer in viewer.layers] == ["flat"]


def test_deleting_the_preprocess_input_during_a_run_adds_nothing(preprocess, qtbot, messages, monkeypatch):
    from napari_virtual_stain.preprocess import correct_flatfield
    from napari_virtual_stain.workflows import preprocess as preprocess_workflow

    def slow_flatfield(image, progress=None, cancel=None, **kwargs):
        cancel.wait(20)  # returns once the run is dropped
        return correct_flatfield(image, **kwargs)
    monkeypatch.setattr(preprocess_workflow, "correct_flatfield", slow_flatfield)
    viewer, widget = preprocess
    viewer.add_image(np.random.default_rng(2).random((32, 32)).astype(np.float32), name="bf")
    widget.reset_choices()
    widget.input.value = "bf"
    widget.flat_run.native.click()
    viewer.layers.remove("bf")
    qtbot.waitUntil(lambda: not widget.job.running and widget.flat_run.enabled, timeout=30000)
    qtbot.wait(50)
    assert len(viewer.layers) == 0
    assert messages == ["Flat-field correction stopped: its input layer 'bf' was removed from the viewer, "
                        "so nothing was added."]
    assert widget.info.value == "Flat-field correction of 'bf' stopped; nothing was added."


# -- item 7: Fine-tune Save names -----------------------------------------------------------------

@pytest.fixture
def fine_tune(make_napari_viewer, user_models):
    """A Fine-tune dock set to train a new 2D U-Net on a 64x64 pair."""
    viewer = make_napari_viewer()
    x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    viewer.add_image(x, name="bf")
    viewer.add_image(x * 0.5, name="nuclei")
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.input.value, tune.targets.value = "bf", ["nuclei"]
    tune.start.value, tune.patch.value = "new: U-Net (2D)", 32
    return viewer, tune


def test_fine_tune_save_refuses_bad_names_and_asks_before_replacing(fine_tune, user_models, qtbot,
                                                                     messages, monkeypatch):
    viewer, tune = fine_tune
    tune.steps.value = 2
    tune.train()
    qtbot.waitUntil(lambda: not tune.job.running and tune.save_button.enabled, timeout=120000)
    messages.clear()
    before = sorted(p.name for p in user_models.iterdir())
    for name, words in [("../evil", "cannot be a model name"), ("a/b", "cannot be a model name"),
                        ("", "Type a name for the model"), ("x.state", "cannot be a model name")]:
        tune.name.value = name
        tune.save()
        assert words in messages[-1] and "unexpectedly" not in messages[-1], name
        assert tune.status.value.startswith("not saved")
    assert sorted(p.name for p in user_models.iterdir()) == before  # nothing written
    assert not (user_models.parent / "evil.pt").exists()

    questions = []
    answer = [False]
    monkeypatch.setattr(finetune_widget, "confirm_replace", lambda parent, text: questions.append(text) or answer[0])
    (user_models / "mine.pt").write_bytes(b"an earlier model")
    tune.name.value = "mine"
    tune.save()
    assert "already in your model folder" in questions[-1]
    assert (user_models / "mine.pt").read_bytes() == b"an earlier model"  # kept: the user said no
    assert tune.status.value == "not saved: 'mine' is kept as it was."
    tune.name.value = "demo-2d-nuclei-membrane"
    tune.save()
    assert "bundled model" in questions[-1] and not (user_models / "demo-2d-nuclei-membrane.pt").exists()
    answer[0] = True
    tune.name.value = "mine"
    tune.save()
    _, card = load_model("mine")  # replaced by the trained model
    assert card.name == "mine" and card.output_channels == ["nuclei"]
    assert messages[-1].startswith("Saved 'mine'")


# -- item 7: a tiny layer on screen is in view ---------------------------------------------------------

def test_a_2x2_layer_on_screen_is_in_view(make_napari_viewer, user_models, qtbot, messages):
    save_tiny_model(user_models, name="tiny-2d")
    viewer = make_napari_viewer()
    widget = VirtualStainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    data = np.arange(4, dtype=np.float32).reshape(2, 2)
    viewer.add_image(data.copy(), name="t", translate=(10.3, -4.7), scale=(0.25, 0.25))
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "t", "tiny-2d", CURRENT_VIEW
    viewer.reset_view()
    zoom = viewer.camera.zoom
    y0, x0 = 10.3, -4.7  # world position of pixel (0, 0)'s centre
    for centre, zoom_by, expect in [((y0 + 0.125, x0 + 0.125), 1, ((0, 0), (2, 2))),  # whole layer
                                    ((y0 + 0.2, x0 + 0.2), 500, ((1, 1), (2, 2))),  # deep inside one pixel
                                    ((y0 - 0.1, x0 - 0.1), 500, ((0, 0), (1, 1))),  # the layer's corner
                                    ((y0 + 0.125, x0 + 0.125), 1e4, ((0, 0), (2, 2)))]:  # on a pixel seam
        viewer.camera.zoom, viewer.camera.center = zoom * zoom_by, centre
        region = widget._region_for(viewer.layers["t"], load_model("tiny-2d")[1])
        assert (region.start, region.stop) == expect, (centre, zoom_by)
    widget.run()
    qtbot.waitUntil(lambda: "t · nuclei" in viewer.layers, timeout=30000)
    assert not any("not in view" in m for m in messages)
    np.testing.assert_array_equal(viewer.layers["t"].data, data)


def test_closing_fine_tune_during_training_keeps_the_model_trained_so_far(fine_tune, user_models, qtbot, messages):
    viewer, tune = fine_tune
    tune.steps.value, tune.name.value = 100000, "closed-early"
    tune.train()
    qtbot.waitUntil(lambda: tune.trainer is not None and tune.trainer.step >= 2, timeout=120000)
    job, model = tune.job, weakref.ref(tune.trainer.model)
    viewer.window.remove_dock_widget(tune)  # the user closes the dock mid-run
    qtbot.waitUntil(lambda: job.settled, timeout=120000)
    qtbot.waitUntil(lambda: tune.trainer is None, timeout=10000)  # let go once the kept model is written
    del job
    gc.collect()
    assert model() is None  # nothing holds the network (and its device memory) any more
    kept = [p for p in (user_models / "unsaved").glob("closed-early-*.pt") if not p.name.endswith(".state.pt")]
    assert len(kept) == 1 and kept[0].with_suffix(".state.pt").exists()
    _, card = load_model(kept[0])
    assert card.training["steps"] >= 2 and card.output_channels == ["nuclei"]
    assert any(str(kept[0]) in m and "was kept as" in m for m in messages)
    assert "closed-early" not in [p.stem for p in user_models.glob("*.pt")]  # not listed among the models


def test_closing_fine_tune_after_training_gives_its_model_and_memory_back(fine_tune, qtbot, monkeypatch):
    viewer, tune = fine_tune
    emptied = []
    monkeypatch.setattr(finetune_widget, "empty_device_caches", lambda: emptied.append(True))
    tune.steps.value, tune.name.value = 3, "kept-in-memory"
    tune.train()
    qtbot.waitUntil(lambda: tune.job is not None and tune.job.settled and not tune.job.running, timeout=120000)
    model = weakref.ref(tune.trainer.model)
    viewer.window.remove_dock_widget(tune)
    assert tune.trainer is None and emptied == [True]
    gc.collect()
    assert model() is None  # the network and its optimiser can be freed


def test_closing_a_dock_gives_the_loaded_models_back(stain, qtbot, messages):
    from napari_virtual_stain.engine.predictor_cache import SHARED

    viewer, widget, net, data = stain
    widget.run()
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.settled, timeout=60000)
    assert len(SHARED) >= 1, messages
    viewer.window.remove_dock_widget(widget)
    assert len(SHARED) == 0


def test_a_run_that_fails_ends_in_the_failed_state_with_a_sentence(stain, qtbot, messages, monkeypatch):
    from napari_virtual_stain.errors import CheckpointError

    viewer, widget, net, data = stain

    def broken(name):
        raise CheckpointError("tiny-2d.pt is damaged.")

    monkeypatch.setattr(stain_widget, "load_model", broken)
    monkeypatch.setattr(widget, "_view_cache_for", lambda *a: None)
    from napari_virtual_stain.engine.predictor_cache import SHARED

    SHARED.release()  # no cached predictor: the (broken) loader runs
    widget.run()
    qtbot.waitUntil(lambda: widget.run_state == "failed", timeout=30000)
    assert "tiny-2d.pt is damaged." in messages and no_overlays(viewer)
