"""The same campaign from Python: user mistakes raise the project's errors with a sentence,
before any work or memory is spent, and never leave a file half-written or replaced."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_virtual_stain.engine import memory
from napari_virtual_stain.engine.normalise import compute_stats, flat_channels_warning
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import CheckpointError, InputError, ReaderError, plain_text
from napari_virtual_stain.io.outputs import (OutputTransaction, StagedOutputs, check_distinct, check_output_file,
                                             check_output_folder)
from napari_virtual_stain.io.tiff_reader import load_image, with_axes
from napari_virtual_stain.models import checkpoint
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.factory import build_model, plan_model
from napari_virtual_stain.preprocess.flatfield import correct_flatfield
from napari_virtual_stain.training.trainer import TrainConfig, Trainer

from conftest import save_tiny_model, tiny_unet_card


def _tiny_predictor(**kw):
    card = tiny_unet_card()
    return Predictor(build_model(card.architecture, card.arch_args), card, device="cpu", precision="fp32", **kw)


# ---- shapes and tiles ---------------------------------------------------------------------


def test_a_1d_array_is_called_what_it_is_not_empty():
    with pytest.raises(InputError, match=r"shape \(50,\) \(1 axes\), which is not an image"):
        _tiny_predictor().predict(np.zeros(50, np.float32))


def test_tiles_below_the_smallest_usable_are_refused_naming_it():
    with pytest.raises(InputError, match="smallest it can use is 16x16.*size multiple is 4"):
        _tiny_predictor(tile=(8, 8), overlap=(0, 0))
    with pytest.raises(InputError, match="positive number of pixels"):
        _tiny_predictor(tile=(0, 32), overlap=(0, 8))


def test_the_smallest_tile_follows_the_network():
    def smallest(multiple, dims=2):
        card = tiny_unet_card(spatial_dims=dims)
        model = build_model(card.architecture, card.arch_args)
        model.size_multiple = multiple
        card.tile = [max(multiple, 1024 if dims == 2 else 64)] * dims
        return Predictor(model, card, device="cpu").min_tile()

    assert smallest(16) == (64, 64)  # the bundled U-Net: 4x its multiple
    assert smallest(256) == (256, 256)  # pix2pix's U-Net-256 keeps its own tile
    assert smallest(8, dims=3) == (8, 32, 32)  # a 3D U-Net: thin slabs in Z are allowed


def test_fitted_tiles_never_shrink_below_the_smallest():
    predictor = _tiny_predictor(tile=(32, 32), overlap=(8, 8))
    tile, _ = predictor._tile_for((35, 200))  # 35 rows would fit two 24-row tiles
    assert min(tile) >= 16 and tile[0] >= predictor.min_tile()[0]


def test_cancelled_before_start_publishes_nothing():
    cancel = threading.Event()
    cancel.set()
    from napari_virtual_stain.errors import Cancelled

    with pytest.raises(Cancelled):
        _tiny_predictor().predict(np.zeros((1, 40, 40), np.float32), cancel=cancel)


# ---- model cards and architecture arguments --------------------------------------------------


@pytest.mark.parametrize("args,message", [
    ({"in_channels": 1, "out_channels": 1, "depth": 0}, "depth must be at least 1"),
    ({"in_channels": 1, "out_channels": 1, "base": 0}, "layers without weights"),
    ({"in_channels": 1, "out_channels": 1, "depth": "four"}, "do not fit the architecture 'unet'"),
    ([1, 2], "must be a mapping"),
    ({"in_channels": 1, "out_channels": 1, "base": 4096, "max_width": 100000, "depth": 6}, "million parameters"),
])
def test_bad_architecture_arguments_are_sentences(args, message):
    with pytest.raises(CheckpointError, match=message):
        build_model("unet", args)


def test_a_huge_card_over_tiny_weights_is_refused_before_the_network_is_built(tmp_path, monkeypatch):
    path, card = save_tiny_model(tmp_path, name="forged")
    payload = torch.load(path, weights_only=True)
    payload["card"]["arch_args"].update(base=1024, max_width=1024, depth=4)  # ~0.7 GB of float32
    torch.save(payload, path)
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: pytest.fail("the real network was built"))
    with pytest.raises(CheckpointError, match="do not fit the architecture its card names"):
        checkpoint.load_checkpoint(path)


def test_planning_a_network_takes_no_memory():
    model = plan_model("unet", {"in_channels": 1, "out_channels": 1, "base": 64})
    assert all(p.device.type == "meta" for p in model.parameters())


def test_error_text_from_libraries_is_one_plain_line():
    assert plain_text("\x1b[1mWeights only load failed\x1b[0m\nsecond line") == "Weights only load failed"
    assert len(plain_text("x" * 1000, limit=50)) == 50


# ---- training never loses a model ----------------------------------------------------------------


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((1, 64, 64), dtype=np.float32)
    return x, np.concatenate([x, 1 - x])


def test_config_mistakes_are_sentences():
    for kwargs, message in [({"lr": -1.0}, "learning rate"), ({"lr": float("nan")}, "learning rate"),
                            ({"val_fraction": 1.0}, "validation fraction"), ({"gan_weight": -1.0}, "Gan weight")]:
        with pytest.raises(InputError, match=message):
            TrainConfig(patch=(32, 32), **kwargs).check(2)


def test_a_run_writes_its_model_file_only_after_a_trained_step(tmp_path):
    x, y = _pair()
    card = tiny_unet_card()
    target = tmp_path / "model.pt"
    target.write_bytes(b"the user's earlier model")
    config = TrainConfig(patch=(32, 32), batch_size=2, steps=5, val_every=100, device="cpu", best_path=str(target))
    trainer = Trainer(build_model(card.architecture, card.arch_args), card, [x], [y], config)
    stop = threading.Event()
    stop.set()  # Stop pressed at once: only the step-0 validation ran
    result = trainer.run(cancel=stop)
    assert result.steps == 0
    assert target.read_bytes() == b"the user's earlier model"


def test_resume_refuses_a_state_from_another_run(tmp_path):
    x, y = _pair()
    card = tiny_unet_card()
    config = TrainConfig(patch=(32, 32), batch_size=2, steps=2, val_every=1, device="cpu")
    paths = []
    for name in ("a", "b"):
        trainer = Trainer(build_model(card.architecture, card.arch_args), card, [x], [y], config)
        trainer.run()
        paths.append(trainer.save(tmp_path / f"{name}.pt"))
    (tmp_path / "a.state.pt").write_bytes((tmp_path / "b.state.pt").read_bytes())
    again = Trainer(build_model(card.architecture, card.arch_args), card, [x], [y], config)
    with pytest.raises(CheckpointError, match="belongs to another training run"):
        again.resume(paths[0])
    again.resume(paths[1])  # its own state is fine
    assert again.step == 2


# ---- inputs -------------------------------------------------------------------------------------


def test_a_forged_tiff_header_is_refused_without_reading(tmp_path):
    path = tmp_path / "forged.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    with tifffile.TiffFile(path, mode="r+b") as tf:
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tf.pages[0].tags[tag].overwrite(100000)
    with pytest.raises(ReaderError, match=r"declares 100000 x 100000 pixels \(18.6 GB\).*only 8.0 KB"):
        load_image(path)


def test_binary_images_are_read_as_0_and_1(tmp_path):
    tifffile.imwrite(tmp_path / "mask.tif", np.eye(8, dtype=bool))
    image = load_image(tmp_path / "mask.tif")
    assert image.data.dtype == np.uint8 and image.data.max() == 1
    stats = compute_stats(np.eye(8, dtype=bool)[None], {"kind": "percentile", "low": 0, "high": 100})
    assert stats["low"] == [0.0] and stats["high"] == [1.0]


def test_axes_can_be_given_and_wrong_ones_are_named(tmp_path):
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((9, 16, 16), np.uint8))
    image = load_image(tmp_path / "p.tif")
    assert with_axes(image, "CYX").axes == "CYX" and with_axes(image, "CYX").channel_names[-1] == "C8"
    assert with_axes(image, "YXC").axes == "CYX"  # any order, moved to channels first
    with pytest.raises(InputError, match="do not describe p.tif"):
        with_axes(image, "CZYX")


def test_flat_channels_are_named():
    stats = compute_stats(np.stack([np.full((8, 8), np.nan), np.arange(64.0).reshape(8, 8)]),
                          {"kind": "percentile", "low": 1, "high": 99})
    assert flat_channels_warning(stats, ["DAPI", "GFP"]).startswith("DAPI is constant or has no finite value")
    assert flat_channels_warning(compute_stats(np.ones((1, 4, 4)) * np.arange(4), {"kind": "percentile"})) is None


def test_flatfield_sigma_larger_than_the_image_is_refused_before_any_blur():
    with pytest.raises(InputError, match="larger than the image"):
        correct_flatfield(np.random.default_rng(0).random((32, 40), dtype=np.float32), sigma=1e9)


def test_work_that_cannot_fit_in_memory_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    memory.require_memory(2**20, "A small result")
    with pytest.raises(InputError, match=r"needs about 2.0 GB of memory but only 1.0 GB is free"):
        memory.require_memory(2**31, "The result")


# ---- outputs ------------------------------------------------------------------------------------


def test_output_checks(tmp_path):
    src = tmp_path / "in.tif"
    src.write_bytes(b"x")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="also an input"):
        check_output_file(tmp_path / "sub" / ".." / "in.tif", inputs=[src])
    with pytest.raises(InputError, match="must end in .tif or .tiff"):
        check_output_file(tmp_path / "out.png")
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(tmp_path, suffixes=None)
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "out.tif")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(InputError, match="same file"):
        check_distinct({"output": tmp_path / "a.tif", "maps": tmp_path / "." / "a.tif"})
    assert check_output_file(tmp_path / "new" / "deeper" / "out.tif") == tmp_path / "new" / "deeper" / "out.tif"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_transaction_that_fails_leaves_nothing_and_keeps_what_was_there(tmp_path):
    keep = tmp_path / "a.tif"
    keep.write_bytes(b"earlier result")
    with pytest.raises(RuntimeError):
        with OutputTransaction() as tx:
            tx.stage(keep).write_bytes(b"new")
            tx.write_text(tmp_path / "new-folder" / "b.json", "{}")
            raise RuntimeError("the second output failed")
    assert keep.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]  # no temporary file, no new folder
    with OutputTransaction() as tx:
        staged = tx.stage(tmp_path / "x.ome.tif")
        assert staged.name.endswith(".ome.tif") and staged.name.startswith(".")
        staged.write_bytes(b"ome")
    assert (tmp_path / "x.ome.tif").read_bytes() == b"ome"


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with StagedOutputs(tmp_path / "out") as out:
            out.path("a.png").write_bytes(b"a")
            raise RuntimeError("the network failed")
    assert list(tmp_path.iterdir()) == []
    with StagedOutputs(tmp_path / "out") as out:
        out.path("a.png").write_bytes(b"a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_a_typo_in_a_failed_marker_is_refused():
    from test_maxim_core import MARKERS, OracleMean, good_stack, oracle_card
    from napari_virtual_stain.tasks.maxim import impute_marker

    with pytest.raises(InputError, match="no marker 'CD99'"):
        impute_marker(OracleMean(), oracle_card("CD3"), good_stack(seed=0), MARKERS, missing=["CD99"], device="cpu")


def test_unreadable_imputers_are_reported(tmp_path):
    from test_maxim_core import OracleMean, oracle_card
    from napari_virtual_stain.models.checkpoint import save_checkpoint
    from napari_virtual_stain.tasks.maxim import find_imputers

    save_checkpoint(tmp_path / "imputer-CD3.pt", OracleMean(), oracle_card("CD3"))
    (tmp_path / "imputer-CD8.pt").write_bytes(b"junk")
    problems: list[str] = []
    assert list(find_imputers(tmp_path, problems)) == ["CD3"]
    assert len(problems) == 1 and problems[0].startswith("skipped imputer-CD8.pt is not a readable")


def test_a_subscription_does_not_keep_a_closed_dock_alive():
    import gc
    import weakref

    from napari_virtual_stain.models import registry

    class Dock:
        calls = 0

        def changed(self):
            Dock.calls += 1

    dock = Dock()
    registry.subscribe(dock.changed)
    registry.notify_models_changed()
    assert Dock.calls == 1
    gone = weakref.ref(dock)
    del dock
    gc.collect()
    assert gone() is None  # the registry held it weakly
    registry.notify_models_changed()  # and forgets it without error
    assert Dock.calls == 1
