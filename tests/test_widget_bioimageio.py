"""bioimage.io packages in the docks: chosen in the Virtual Stain dock (said to be a program
before loading), bad ones a notification; the Fine-tune dock exports next to Save."""

import numpy as np
import pytest
from scipy import ndimage as ndi

import bioimageio.core  # noqa: E402,F401  (a dependency: a missing install must fail, not skip)

from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.models.registry import load_model  # noqa: E402
from napari_virtual_stain.tasks.stain import run_stain  # noqa: E402
from napari_virtual_stain.widgets import finetune_widget  # noqa: E402
from napari_virtual_stain.widgets.finetune_widget import FineTuneWidget  # noqa: E402
from napari_virtual_stain.widgets.stain_widget import WHOLE, VirtualStainWidget  # noqa: E402

from test_bioimageio_import import _package_04  # noqa: E402



def test_stain_dock_runs_a_package_after_saying_it_is_a_program(make_napari_viewer, user_models, qtbot,
                                                               tmp_path, messages):
    folder = _package_04(tmp_path / "p04")
    viewer = make_napari_viewer()
    dock = VirtualStainWidget(viewer)
    viewer.window.add_dock_widget(dock)
    data = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    viewer.add_image(data, name="raw")
    dock.reset_choices()
    dock.device.value, dock.precision.value, dock.scope.value = "cpu", "fp32", WHOLE
    dock.input.value = "raw"
    dock.package.value = str(folder / "rdf.yaml")
    assert any("TorchScript is a program" in m for m in messages)  # said before anything ran
    assert "TorchScript is a program" in dock.info.value
    dock.run()
    qtbot.waitUntil(lambda: dock.job is not None and not dock.job.running and dock.run_button.enabled, timeout=60000)
    model, card = load_model(folder)
    expected = run_stain(Predictor(model, card, device="cpu", precision="fp32"), data).data
    layer = next(layer for layer in viewer.layers if layer.name.startswith("raw · "))
    np.testing.assert_allclose(layer.data, expected[0], atol=1e-5)


def test_stain_dock_says_why_a_package_is_refused(make_napari_viewer, user_models, tmp_path, messages):
    folder = _package_04(tmp_path / "p04")
    (folder / "weights.pt").unlink()
    viewer = make_napari_viewer()
    dock = VirtualStainWidget(viewer)
    dock.package.value = str(folder / "rdf.yaml")
    assert any("weights.pt" in m for m in messages), messages
    assert "cannot be used" in dock.info.value


def test_finetune_dock_exports_a_package_next_to_save(make_napari_viewer, user_models, qtbot, tmp_path,
                                                      messages, monkeypatch):
    viewer = make_napari_viewer()
    x = ndi.gaussian_filter(np.random.default_rng(0).random((96, 96)), 2).astype(np.float32)
    viewer.add_image(x, name="bf")
    viewer.add_image(np.clip(x - x.mean(), 0, None) * 4, name="nuclei")
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.input.value, tune.targets.value = "bf", ["nuclei"]
    tune.start.value, tune.patch.value, tune.steps.value, tune.name.value = "new: U-Net (2D)", 32, 3, "tuned"
    assert not tune.export_button.enabled  # nothing trained yet
    tune.train()
    qtbot.waitUntil(lambda: tune.job is not None and not tune.job.running and tune.train_button.enabled, timeout=120000)
    assert tune.export_button.enabled
    target = tmp_path / "tuned.zip"
    monkeypatch.setattr(finetune_widget, "ask_package_path", lambda parent, suggestion: str(target))
    tune.export()
    qtbot.waitUntil(lambda: target.exists() and tune.train_button.enabled, timeout=120000)
    assert any("Wrote the bioimage.io package" in m for m in messages), messages
    model, card = load_model(target)
    assert card.name == "tuned" and card.output_channels == ["nuclei"]
    image = x[None]
    ours = tune.trainer.trained_card()
    from napari_virtual_stain.models.factory import build_model

    original = build_model(ours.architecture, ours.arch_args)
    original.load_state_dict(tune.trainer.best_state)
    np.testing.assert_array_equal(Predictor(model, card, device="cpu", precision="fp32").predict(image),
                                  Predictor(original, ours, device="cpu", precision="fp32").predict(image))


def test_finetune_dock_disables_export_of_a_2_5d_model_with_the_reason(make_napari_viewer, user_models, qtbot,
                                                                       messages):
    viewer = make_napari_viewer()
    x = ndi.gaussian_filter(np.random.default_rng(0).random((5, 96, 96)), 2).astype(np.float32)
    viewer.add_image(x, name="bf")
    viewer.add_image(np.clip(x - x.mean(), 0, None) * 4, name="nuclei")
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.input.value, tune.targets.value = "bf", ["nuclei"]
    tune.start.value, tune.patch.value, tune.steps.value, tune.planes.value = (
        "new: U-Net 2.5D (z planes -> one plane)", 32, 2, 3)
    assert "2.5D model" in tune.export_button.tooltip  # said before anything is trained
    tune.train()
    qtbot.waitUntil(lambda: tune.job is not None and not tune.job.running and tune.train_button.enabled, timeout=120000)
    assert tune.trainer.step == 2 and tune.save_button.enabled, messages
    assert not tune.export_button.enabled and "window of 3 z planes" in tune.export_button.tooltip
    tune.start.value = "new: U-Net (2D)"  # what the trained model is decides, not what the next run would be
    assert not tune.export_button.enabled and "window of 3 z planes" in tune.export_button.tooltip
