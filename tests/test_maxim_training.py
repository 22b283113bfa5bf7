"""Training one imputer per marker: files, cards, held-out scores, dropout, progress, cancel."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_virtual_stain.errors import Cancelled, InputError
from napari_virtual_stain.models.checkpoint import load_checkpoint
from napari_virtual_stain.tasks.maxim import find_imputers, load_imputers
from napari_virtual_stain.tasks.maxim_qc import run_qc
from napari_virtual_stain.training.imputers import ImputerConfig, _DropoutTrainer, imputer_card, train_imputers
from test_maxim_core import good_stack

NAMES = ["DAPI", "Lap2", "Ki67"]


def tiny(**kw) -> ImputerConfig:
    base = dict(steps=4, patch=32, batch_size=2, depth=2, base=4, max_width=8, val_every=2, device="cpu")
    base.update(kw)
    return ImputerConfig(**base)


def test_one_checkpoint_and_card_per_marker(tmp_path):
    stack = good_stack()[:3]
    seen = []
    run = train_imputers(stack, NAMES, tmp_path, config=tiny(), progress=lambda d, t: seen.append((d, t)))
    assert set(run.paths) == set(NAMES)
    assert {m: p.name for m, p in find_imputers(tmp_path).items()} == {
        "DAPI": "imputer-DAPI.pt", "Lap2": "imputer-Lap2.pt", "Ki67": "imputer-Ki67.pt"}
    model, card = load_checkpoint(tmp_path / "imputer-Ki67.pt")
    assert card.task == "impute" and card.output_channels == ["Ki67"] and card.input_channels == ["DAPI", "Lap2"]
    assert card.arch_args["activation"] == "sigmoid" and card.arch_args["max_width"] == 8
    assert set(card.scores["val"]) == {"ssim", "pcc", "mae", "local_error_p999"} and "mae" in card.scores["bl_mean"]
    assert set(card.scores["val_without"]) == {"DAPI", "Lap2"}  # leave-one-input-out, for the QC
    assert card.scores["heldout_region"] == {"start": [32, 0], "stop": [64, 64]}
    assert set(card.extra["marker_stats"]) == set(NAMES) and card.extra["dtype"] == "uint16"
    assert card.training["steps"] == 4
    # progress covers all markers and ends complete
    assert seen[-1] == (3000, 3000) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # the trained folder feeds the QC directly
    report = run_qc(stack, NAMES, load_imputers(tmp_path), device="cpu")
    assert set(report.markers) == set(NAMES)


def test_only_the_chosen_markers_are_trained_and_a_constant_one_is_refused(tmp_path):
    stack = good_stack()[:3]
    run = train_imputers(stack, NAMES, tmp_path, markers=["ki67"], config=tiny(steps=2))
    assert list(run.paths) == ["Ki67"]
    stack[1] = 7
    with pytest.raises(InputError, match="Lap2 is constant"):
        train_imputers(stack, NAMES, tmp_path, config=tiny())
    with pytest.raises(InputError, match="no marker 'CD8'"):
        train_imputers(good_stack()[:3], NAMES, tmp_path, markers=["CD8"], config=tiny())


def test_cancel_keeps_finished_markers_and_writes_no_partial_one(tmp_path):
    cancel = threading.Event()
    done = []

    def on_marker(result):
        done.append(result.marker)
        cancel.set()  # stop during the next marker

    with pytest.raises(Cancelled):
        train_imputers(good_stack()[:3], NAMES, tmp_path, config=tiny(), cancel=cancel, on_marker=on_marker)
    assert done == ["DAPI"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["imputer-DAPI.pt"]


def test_input_dropout_zeroes_whole_markers_but_never_all():
    stack = good_stack()[:3]
    config = tiny(batch_size=16)
    card = imputer_card("Ki67", ["DAPI", "Lap2"], config, stack, NAMES)
    from napari_virtual_stain.models.factory import build_model

    trainer = _DropoutTrainer(build_model(card.architecture, card.arch_args), card, [stack[:2]], [stack[2][None]],
                              config.train_config())
    trainer.input_dropout = 1.0
    x, _, _ = trainer.next_batch()
    alive = x.flatten(2).abs().amax(-1) > 0
    assert torch.all(alive.sum(1) == 1)  # exactly one marker rescued per sample
    trainer.input_dropout = 0.0
    x, _, _ = trainer.next_batch()
    assert torch.all(x.flatten(2).abs().amax(-1) > 0)


def test_a_short_training_beats_bl_zero_on_the_held_out_region(tmp_path):
    # Markers share one pattern, so even a few tiny steps must pick it up.
    stack = good_stack()[:3]
    run = train_imputers(stack, NAMES, None, markers=["Ki67"],
                         config=tiny(steps=25, base=8, max_width=16, lr=5e-3, batch_size=4, val_every=25))
    scores = run.results["Ki67"].scores
    assert scores["val"]["pcc"] > 0.7, scores
    assert scores["val"]["mae"] < scores["bl_zero"]["mae"]


def test_the_adversarial_variant_trains_with_a_patchgan(tmp_path):
    run = train_imputers(good_stack()[:3], NAMES, tmp_path, markers=["Ki67"], config=tiny(steps=2, adversarial=True))
    card = run.results["Ki67"].card
    assert card.extra["adversarial"] is True and card.training["config"]["gan"] == "vanilla"
    assert (tmp_path / "imputer-Ki67.pt").is_file()
