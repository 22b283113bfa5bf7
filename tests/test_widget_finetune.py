"""The Fine-tune dock under Xvfb: a short run, Stop, Resume, Save, then use the model."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.widgets import _worker
from napari_virtual_stain.widgets.finetune_widget import FineTuneWidget
from napari_virtual_stain.widgets.stain_widget import WHOLE, VirtualStainWidget


@pytest.fixture
def docks(make_napari_viewer, user_models, monkeypatch):
    messages = []
    monkeypatch.setattr(_worker, "show_error", messages.append)
    monkeypatch.setattr(_worker, "show_info", messages.append)
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    x = ndi.gaussian_filter(rng.random((96, 96)), 2).astype(np.float32)
    viewer.add_image(x, name="bf")
    viewer.add_image(np.clip(x - x.mean(), 0, None) * 4, name="nuclei")
    tune, stain = FineTuneWidget(viewer), VirtualStainWidget(viewer)
    viewer.window.add_dock_widget(tune)
    viewer.window.add_dock_widget(stain)
    tune.input.value, tune.targets.value = "bf", ["nuclei"]
    tune.start.value, tune.patch.value, tune.name.value = "new: U-Net (2D)", 32, "tuned"
    tune.messages = messages
    return viewer, tune, stain


def wait_idle(widget, qtbot, timeout=120000):
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running and widget.train_button.enabled,
                    timeout=timeout)


def test_train_stop_resume_save_and_use(docks, qtbot, user_models):
    viewer, tune, stain = docks
    tune.steps.value = 100000
    stopped_at = []

    def stop_after_a_few(done, total):
        if tune.trainer.step >= 12 and not stopped_at:
            stopped_at.append(tune.trainer.step)
            tune.stop()
    tune.relay.progressed.connect(stop_after_a_few)
    tune.train()
    wait_idle(tune, qtbot)
    first = tune.trainer.step
    assert 12 <= first < 100000  # Stop worked long before the planned steps
    assert "stopped" in tune.status.value
    assert tune.save_button.enabled and tune.resume_button.enabled
    assert tune.plot.series["train"], "the loss curve is drawn"
    assert any(layer.name.startswith("bf · preview") for layer in viewer.layers)

    tune.relay.progressed.disconnect(stop_after_a_few)
    tune.trainer.config.steps = tune.trainer.total_steps = first + 5
    tune.resume()
    wait_idle(tune, qtbot)
    assert tune.trainer.step == first + 5  # continued, not restarted

    tune.save()
    assert (user_models / "tuned.pt").is_file()
    assert "tuned" in stain.model.choices  # appears at once in the Virtual Stain dock
    stain.input.value, stain.model.value, stain.scope.value = "bf", "tuned", WHOLE
    stain.run()
    qtbot.waitUntil(lambda: "bf · nuclei" in viewer.layers, timeout=60000)
    assert viewer.layers["bf · nuclei"].data.shape == (96, 96)


def test_mismatched_pair_is_refused_with_a_sentence(docks, qtbot):
    viewer, tune, _ = docks
    viewer.add_image(np.zeros((50, 60), np.float32) + 1, name="other")
    tune.targets.value = ["other"]
    tune.train()
    assert any("pairs must have the same shape" in str(m) for m in tune.messages)
    assert tune.job is None and tune.train_button.enabled


def test_no_target_is_refused(docks):
    _, tune, _ = docks
    tune.targets.value = []
    tune.train()
    assert any("at least one target" in str(m) for m in tune.messages)


@pytest.mark.parametrize("start,stack", [("new: U-Net (3D, for z-stacks)", True), ("demo-2d-nuclei-membrane", True),
                                         ("new: TransUNet", False)])
def test_other_starting_points_train(make_napari_viewer, user_models, qtbot, start, stack):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    shape = (12, 96, 96) if stack else (96, 96)
    x = ndi.gaussian_filter(rng.random(shape), 2).astype(np.float32)
    viewer.add_image(x, name="bf")
    viewer.add_image(np.clip(x - x.mean(), 0, None) * 4, name="nuclei")
    tune = FineTuneWidget(viewer)
    tune.input.value, tune.targets.value, tune.start.value = "bf", ["nuclei"], start
    tune.patch.value, tune.steps.value = 32, 3
    tune.train()
    assert tune.job is not None, "training did not start"
    wait_idle(tune, qtbot)
    assert tune.trainer.step == 3
    expected_dims = 3 if "3D" in start else 2
    assert tune.trainer.card.spatial_dims == expected_dims
    assert tune.trainer.card.output_channels == ["nuclei"]


def test_an_rgb_image_with_rgb_panels_as_targets_trains_a_colour_model(make_napari_viewer, user_models, qtbot):
    """DeepLIIF 6-panel imports are RGB: IHC in, grey stains rendered in colour as targets."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    ihc = (ndi.gaussian_filter(rng.random((96, 96, 3)), (2, 2, 0)) * 255).astype(np.uint8)
    dapi = np.repeat(255 - ihc[..., 2:3], 3, axis=-1)  # a grey stain rendered as RGB
    viewer.add_image(ihc, name="IHC", rgb=True)
    viewer.add_image(dapi, name="DAPI", rgb=True)
    tune, stain = FineTuneWidget(viewer), VirtualStainWidget(viewer)
    tune.input.value, tune.targets.value, tune.start.value = "IHC", ["DAPI"], "new: U-Net (2D)"
    tune.patch.value, tune.steps.value, tune.name.value = 32, 3, "ihc-to-dapi"
    tune.train()
    wait_idle(tune, qtbot)
    assert tune.trainer.card.input_channels == ["R", "G", "B"] and tune.trainer.card.n_in == 3
    tune.save()
    stain.input.value, stain.model.value, stain.scope.value = "IHC", "ihc-to-dapi", WHOLE
    stain.run()
    qtbot.waitUntil(lambda: "IHC · DAPI" in viewer.layers, timeout=60000)
    assert viewer.layers["IHC · DAPI"].data.shape == (96, 96)
    np.testing.assert_array_equal(viewer.layers["IHC"].data, ihc)  # the input is untouched


def test_a_run_saved_earlier_resumes_in_a_new_dock(docks, qtbot, user_models):
    viewer, tune, _ = docks
    tune.steps.value = 4
    tune.train()
    wait_idle(tune, qtbot)
    tune.save()
    assert (user_models / "tuned.state.pt").is_file()
    later = FineTuneWidget(viewer)  # a new session: nothing in memory
    later.input.value, later.targets.value, later.patch.value = "bf", ["nuclei"], 32
    later.start.value = "new: U-Net (2D)"
    assert not later.resume_button.enabled
    later.start.value, later.steps.value = "tuned", 3
    assert later.resume_button.enabled
    later.resume()
    wait_idle(later, qtbot)
    assert later.trainer.step == 4 + 3  # continued from the saved step
    assert len(later.trainer.history["train"]) == 7  # with the saved loss history


def test_train_is_disabled_with_the_reason_and_settings_are_remembered(docks, qtbot):
    viewer, tune, _ = docks
    tune.targets.value = []
    assert not tune.train_button.enabled and "at least one target" in tune.train_button.tooltip
    tune.targets.value = ["nuclei"]
    assert tune.train_button.enabled and tune.run_state_label.value == "state: ready"
    tune.steps.value = 3
    tune.train()
    wait_idle(tune, qtbot)
    assert tune.run_state_label.value == "state: done"
    again = FineTuneWidget(viewer)  # a new launch remembers what trained
    assert (again.steps.value, again.patch.value, again.start.value) == (3, 32, "new: U-Net (2D)")
    assert again.settings.arch == "unet" and again.settings.spatial_dims == 2
