"""The fine-tune workflow: one set of settings and one way to make pairs for the dock and the command line."""

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from napari_virtual_stain.cli import main
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.checkpoint import load_checkpoint
from napari_virtual_stain.training.layer_pairs import TrainingImage, training_pairs
from napari_virtual_stain.workflows.finetune import FineTuneSettings
from napari_virtual_stain.workflows.settings_files import settings_file

TINY_ARGS = {"depth": 2, "base": 4}
# What differs between two runs of the same training: when and how long, and the id tying a model to its state.
RUN_SPECIFIC = ("run_id", "date", "seconds")


def pair(seed=0, shape=(64, 48)):
    rng = np.random.default_rng(seed)
    spots = ndi.gaussian_filter((rng.random(shape) > 0.97).astype(np.float32), 1.5)
    bf = (ndi.gaussian_filter(spots, 1) * 500 + 1000 + rng.normal(0, 5, shape)).astype(np.float32)
    return bf, (spots * 4000).astype(np.float32)


def comparable(card):
    data = card.to_dict() if hasattr(card, "to_dict") else dict(vars(card))
    data["training"] = {k: v for k, v in data["training"].items() if k not in RUN_SPECIFIC}
    return data


def test_problems_are_sentences_found_without_building_a_network(user_models):
    assert FineTuneSettings(device="cpu").problems() == []
    assert "one of them" in FineTuneSettings(arch=None).problems()[0]
    assert "no architecture called 'nope'" in FineTuneSettings(arch="nope").problems()[0]
    assert "no model called 'missing'" in FineTuneSettings(arch=None, from_model="missing").problems()[0]
    assert "Unknown loss" in FineTuneSettings(loss="l7").problems()[0]
    assert "at least 1" in FineTuneSettings(steps=0).problems()[0]
    assert "needs 3 sizes" in FineTuneSettings(spatial_dims=3, patch=(64, 64)).problems()[0]


def test_settings_are_remembered_and_junk_is_forgotten(user_models):
    path = settings_file("finetune")
    FineTuneSettings(arch="resnet_generator", patch=(64,), steps=30, minutes=2.5, arch_args={"n_blocks": 3}).save(path)
    loaded = FineTuneSettings.load(path)
    assert (loaded.arch, loaded.patch, loaded.steps, loaded.minutes, loaded.arch_args) == (
        "resnet_generator", (64,), 30, 2.5, {"n_blocks": 3})
    path.write_text("[1, 2]")
    assert FineTuneSettings.load(path) == FineTuneSettings()


def test_validation_rhythm_and_length_are_one_rule():
    config = FineTuneSettings().train_config(2)
    assert (config.steps, config.val_every, config.preview_every, tuple(config.patch)) == (500, 50, 10, (128, 128))
    config = FineTuneSettings(steps=40, patch=(32,)).train_config(3)
    assert (config.val_every, config.preview_every, tuple(config.patch)) == (5, 2, (8, 16, 16))
    config = FineTuneSettings(minutes=3.0).train_config(2)
    assert config.steps is None and config.max_minutes == 3.0 and config.val_every == 50


def test_colour_inputs_and_targets_are_named_and_used_alike():
    ihc = np.random.default_rng(0).integers(0, 255, (40, 40, 4)).astype(np.uint8)  # RGBA: alpha is dropped
    dapi = np.repeat(ihc[..., 2:3], 3, axis=-1)
    pairs = training_pairs(TrainingImage(ihc, "ihc", rgb=True), [TrainingImage(dapi, "DAPI", rgb=True)])
    assert pairs.input_names == ["R", "G", "B"] and pairs.target_names == ["DAPI"]
    assert pairs.inputs[0].shape == (3, 40, 40) and pairs.targets[0].shape == (1, 40, 40)
    np.testing.assert_allclose(pairs.targets[0][0], ihc[..., 2].astype(np.float32))


def test_a_stack_is_planes_for_a_2d_model_and_a_volume_otherwise():
    stack = np.random.default_rng(1).random((5, 32, 32)).astype(np.float32)
    image, target = TrainingImage(stack, "bf"), TrainingImage(stack * 2, "nuclei")
    assert len(training_pairs(image, [target], 2).inputs) == 5
    volume = training_pairs(image, [target])
    assert volume.spatial_dims == 3 and volume.inputs[0].shape == (1, 5, 32, 32)
    with pytest.raises(InputError, match="3D model needs a z-stack"):
        training_pairs(TrainingImage(stack[0], "bf"), [TrainingImage(stack[0], "t")], 3)
    with pytest.raises(InputError, match="pairs must have the same shape"):
        training_pairs(image, [TrainingImage(stack[:, :20], "t")])


def test_the_dock_and_the_command_line_train_the_same_model_with_the_same_card(make_napari_viewer, qtbot,
                                                                                user_models, tmp_path):
    """The same tiny run through both doors: same weights, and cards equal but for time and run id."""
    from napari_virtual_stain.widgets.finetune_widget import FineTuneWidget

    bf, nuclei = pair()
    tifffile.imwrite(tmp_path / "bf.tif", bf)
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei)
    out = tmp_path / "cli-model.pt"
    assert main(["train", str(tmp_path / "bf.tif"), str(tmp_path / "nuclei.tif"), "--arch", "unet",
                 "--arch-args", '{"depth": 2, "base": 4}', "--patch", "32", "--steps", "6", "--device", "cpu",
                 "--name", "same", "-o", str(out)]) == 0

    viewer = make_napari_viewer()
    viewer.add_image(bf, name="bf")
    viewer.add_image(nuclei, name="nuclei")
    tune = FineTuneWidget(viewer)
    tune.input.value, tune.targets.value, tune.start.value = "bf", ["nuclei"], "new: U-Net (2D)"
    tune.patch.value, tune.steps.value, tune.name.value, tune.device.value = 32, 6, "same", "cpu"
    tune.settings.arch_args = dict(TINY_ARGS)  # not shown in the dock; remembered settings may hold it
    tune.train()
    qtbot.waitUntil(lambda: tune.job is not None and not tune.job.running and tune.train_button.enabled,
                    timeout=120000)
    assert tune.run_state_label.value == "state: done"
    tune.save()

    cli_model, cli_card = load_checkpoint(out)
    dock_model, dock_card = load_checkpoint(user_models / "same.pt")
    assert dock_card.input_channels == ["bf"] and dock_card.output_channels == ["nuclei"]
    assert comparable(dock_card) == comparable(cli_card)
    for (key, a), (_, b) in zip(cli_model.state_dict().items(), dock_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_a_z_window_is_checked_as_settings(user_models, tmp_path):
    assert "for 2.5D models" in FineTuneSettings(device="cpu", planes=3).problems()[0]
    assert "for 2.5D models" in FineTuneSettings(device="cpu", target_plane=1).problems()[0]
    assert FineTuneSettings(device="cpu", arch="unet-2.5d", planes=3, target_plane=1).problems() == []
    assert "--z-as-channels" in FineTuneSettings(device="cpu", arch="unet-2.5d", z_as_channels=True).problems()[0]
    assert "no 3D form" in FineTuneSettings(device="cpu", arch="unet-2.5d", spatial_dims=3,
                                            patch=(8, 16, 16)).problems()[0]
    assert "at least 2 planes" in FineTuneSettings(device="cpu", arch="unet-2.5d", planes=1).problems()[0]
    # Too few planes in the data: a sentence from the pairs, before any network is built.
    stack = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    with pytest.raises(InputError, match="fewer than the 5 planes"):
        from napari_virtual_stain.workflows.finetune import prepare
        prepare(FineTuneSettings(device="cpu", arch="unet-2.5d", planes=5), TrainingImage(stack, "bf"),
                [TrainingImage(stack[1], "dapi")])


def test_the_dock_and_the_command_line_train_the_same_2_5d_model_whose_card_records_the_window(
        make_napari_viewer, qtbot, user_models, tmp_path):
    """A 5-plane focal series and a DAPI plane of its plane 3; the dock takes the plane the viewer shows."""
    from napari_virtual_stain.models.zwindow import ZWindow, z_window
    from napari_virtual_stain.widgets.finetune_widget import FineTuneWidget

    bf, nuclei = pair(3)
    stack = np.stack([ndi.gaussian_filter(bf, 1 + abs(z - 3)) for z in range(5)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "bf.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei)
    out = tmp_path / "cli-25d.pt"
    assert main(["train", str(tmp_path / "bf.tif"), str(tmp_path / "nuclei.tif"), "--arch", "unet-2.5d",
                 "--planes", "3", "--target-plane", "3", "--arch-args", '{"depth": 2, "base": 4}', "--patch", "32",
                 "--steps", "4", "--device", "cpu", "--name", "same25", "-o", str(out)]) == 0

    viewer = make_napari_viewer()
    viewer.add_image(stack, name="bf")
    viewer.add_image(nuclei, name="nuclei")
    viewer.dims.set_point(0, 3)
    tune = FineTuneWidget(viewer)
    tune.input.value, tune.targets.value = "bf", ["nuclei"]
    assert not tune.planes.enabled  # planes are a 2.5D network's choice
    tune.start.value = "new: U-Net 2.5D (z planes -> one plane)"
    assert tune.planes.enabled
    tune.planes.value, tune.patch.value, tune.steps.value, tune.name.value, tune.device.value = 3, 32, 4, "same25", "cpu"
    tune.settings.arch_args = dict(TINY_ARGS)
    assert tune.train_button.enabled, tune.train_button.tooltip
    tune.train()
    qtbot.waitUntil(lambda: tune.job is not None and not tune.job.running and tune.train_button.enabled,
                    timeout=120000)
    tune.save()

    cli_model, cli_card = load_checkpoint(out)
    dock_model, dock_card = load_checkpoint(user_models / "same25.pt")
    # Plane 3 of 5 with 3 planes: stack planes 2-4, the target is the window's middle plane.
    assert z_window(dock_card) == ZWindow(3, 1) and dock_card.architecture == "unet-2.5d"
    assert dock_card.training["data"]["z_window"] == {"planes": 3, "centre": 1}
    assert comparable(dock_card) == comparable(cli_card)
    for (key, a), (_, b) in zip(cli_model.state_dict().items(), dock_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_a_2_5d_model_says_before_and_after_training_why_it_cannot_be_exported(user_models):
    """The Fine-tune dock's Export is disabled with this sentence; the export itself refuses with the same one."""
    from napari_virtual_stain.errors import CheckpointError
    from napari_virtual_stain.models.bioimageio_export import export_model
    from napari_virtual_stain.workflows import finetune as workflow
    from napari_virtual_stain.workflows.finetune_outputs import export_problems

    assert FineTuneSettings(device="cpu").export_problems() == []
    settings = FineTuneSettings(device="cpu", arch="unet-2.5d", arch_args=TINY_ARGS, planes=3, patch=(16,), steps=1)
    assert "2.5D model" in settings.export_problems()[0]
    bf, nuclei = pair(shape=(64, 64))
    stack = np.stack([bf] * 5)
    trainer = workflow.prepare(settings, TrainingImage(stack, "bf"), [TrainingImage(np.stack([nuclei] * 5), "nuclei")])
    (problem,) = settings.export_problems(trainer.card)
    assert "window of 3 z planes" in problem
    with pytest.raises(CheckpointError) as refused:
        export_model(trainer.model, trainer.card, user_models / "x.zip")
    assert str(refused.value) == problem == export_problems(trainer.card)[0]


def test_fine_tuning_a_model_defaults_to_the_lower_learning_rate():
    from napari_virtual_stain.training.defaults import FINE_TUNE_LR

    tuned = FineTuneSettings(arch=None, from_model="demo-2d-nuclei-membrane")
    assert tuned.train_config(2).lr == FINE_TUNE_LR
    assert FineTuneSettings(arch=None, from_model="demo-2d-nuclei-membrane", lr=3e-4).train_config(2).lr == 3e-4
    # A fresh network and a GAN run keep the Trainer's own defaults (None: 2e-4 Adam / 5e-5 RMSprop).
    assert FineTuneSettings(arch="unet").train_config(2).lr is None
    assert FineTuneSettings(arch=None, from_model="demo-2d-nuclei-membrane", gan="wgan-gp").train_config(2).lr is None
