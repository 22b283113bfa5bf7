"""The MAXIM/QC workflow: one set of settings for the dock and the impute/qc/cell-scores/train-imputers commands."""

import json

import numpy as np
import pytest

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.synthetic_multiplex import make_multiplex
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.models import checkpoint
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.tasks.maxim import stack_marker_stats
from napari_virtual_stain.workflows import maxim as workflow
from napari_virtual_stain.workflows import maxim_results as shown
from napari_virtual_stain.workflows.maxim import (ATTRIBUTION, CELLS, IMPUTE, QC, TRAIN, MarkerInput, MaximSettings,
                                                  fitting_patch)
from napari_virtual_stain.workflows.settings_files import settings_file
from test_maxim_core import MARKERS, OracleMean, good_stack, oracle_card

PLACE = {"scale": (0.5, 0.5), "translate": (4.0, 8.0)}


@pytest.fixture
def oracle_dir(tmp_path):
    folder = tmp_path / "oracles"
    stats = stack_marker_stats(good_stack(seed=1), MARKERS)
    for m in MARKERS:
        save_checkpoint(folder / f"imputer-{m}.pt", OracleMean(), oracle_card(m, stats=stats))
    return folder


@pytest.fixture(scope="module")
def tissue():
    return make_multiplex((96, 96), seed=3)


@pytest.fixture(scope="module")
def joint_dir(tmp_path_factory, tissue):
    """A joint imputer trained for two steps on synthetic MIBI-like tissue, through the workflow."""
    folder = tmp_path_factory.mktemp("joint")
    settings = MaximSettings(folder=str(folder), minutes=None, steps=2, base=4, depth=2, batch_size=2, device="cpu")
    result = workflow.train(settings, MarkerInput.from_stack(tissue["image"], tissue["channel_names"]))
    assert result.path == folder / "joint-imputer.pt" and result.steps == 2
    return folder


def test_each_action_says_what_stops_it(tmp_path):
    none = MaximSettings()
    assert none.problems(QC) == []  # the training-free checks need no imputer
    for action in (IMPUTE, ATTRIBUTION, CELLS):
        assert none.problems(action) == ["Choose a folder of imputers and the target marker first."]
    assert MaximSettings(folder=str(tmp_path)).problems(IMPUTE) == ["Choose a folder of imputers and the target "
                                                                      "marker first."]  # no target marker
    missing = str(tmp_path / "nowhere")
    assert MaximSettings(folder=missing).problems(QC) == [f"There is no model folder at {missing}."]
    assert MaximSettings(folder=missing, marker="CD3").problems(IMPUTE) == [f"There is no model folder at {missing}."]
    assert none.problems(TRAIN) == ["Choose the folder the imputers are written to first."]
    assert "time budget" in MaximSettings(folder=missing, minutes=None, steps=None).problems(TRAIN)[0]
    assert MaximSettings(folder=missing).problems(TRAIN) == []  # training creates its folder
    cells = MaximSettings(folder=str(tmp_path), marker="CD3", threshold=1.5, expand=-1).problems(CELLS)
    assert "grown by 0 or more" in cells[0] and "between 0 and 1, not 1.5" in cells[1]
    with pytest.raises(Exception, match="Choose a folder of imputers"):
        none.validate(CELLS)


def test_the_markers_say_what_is_wrong_before_anything_is_read():
    stack = good_stack()
    assert MarkerInput.from_planes(list(stack), MARKERS).problems() == []
    assert "Only one marker" in MarkerInput.from_planes([stack[0]], ["DAPI"]).problems()[0]
    assert "different pixel types" in MarkerInput.from_planes([stack[0], stack[1].astype(np.uint8)],
                                                              ["DAPI", "Lap2"]).problems()[0]
    assert "at least two" in MarkerInput.from_planes([], []).problems()[0]
    assert "more than once" in MarkerInput.from_stack(stack, ["a", "b", "a", "c", "d"]).problems()[0]
    assert MarkerInput.from_stack(stack).names == ["C0", "C1", "C2", "C3", "C4"]
    joined, names = MarkerInput.from_planes(list(stack), MARKERS).read()
    np.testing.assert_array_equal(joined, stack)


def test_a_one_marker_action_loads_that_imputer_alone_and_qc_loads_them_all(oracle_dir, monkeypatch):
    loaded = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path, *a, **k: loaded.append(path.name) or real(path, *a, **k))
    markers = MarkerInput.from_stack(good_stack(seed=0), MARKERS)
    settings = MaximSettings(folder=str(oracle_dir), marker="ki67", device="cpu")
    result = workflow.impute(settings, markers)
    assert loaded == ["imputer-Ki67.pt"] and result.target == "Ki67" and result.data.shape == (64, 64)
    loaded.clear()
    workflow.qc(settings, markers)
    assert sorted(loaded) == sorted(f"imputer-{m}.pt" for m in MARKERS)


def test_impute_cells_and_qc_on_synthetic_tissue_and_their_layers(tissue, joint_dir):
    names = tissue["channel_names"]
    markers = MarkerInput.from_stack(tissue["image"], names)
    assert workflow.imputer_markers(str(joint_dir)) == names
    settings = MaximSettings(folder=str(joint_dir), marker="Ki67", device="cpu")
    imputed = workflow.impute(settings, markers)
    assert imputed.data.shape == (96, 96) and 0 <= imputed.data.min() and imputed.data.max() <= 1
    ((data, kwargs, kind),) = shown.imputed_tuples(imputed, "tissue", PLACE)
    assert kind == "image" and kwargs["name"] == "tissue · Ki67 (imputed)" and kwargs["contrast_limits"] == (0.0, 1.0)
    assert kwargs["scale"] == PLACE["scale"] and kwargs["metadata"]["maxim"]
    np.testing.assert_array_equal(data, imputed.data)
    assert shown.describe_imputed(imputed) == "Ki67 imputed over 96x96 pixels."

    cells = workflow.evaluate_cells(settings, markers, tissue["nuclei_labels"])
    assert cells.marker == "Ki67" and cells.n_cells == len(np.unique(tissue["nuclei_labels"])) - 1
    assert set(cells.baselines) == {"BL-Mean", "BL-Zero"} and f"{cells.n_cells} cells" in shown.describe_cells(cells)

    report = workflow.qc(settings, markers)
    assert report.names == names and set(report.checks) == set(names)
    assert shown.describe_qc(report).startswith(("Flagged", "No stain flagged"))


def test_a_blanked_region_becomes_maps_a_box_and_a_row(oracle_dir):
    stack = good_stack(seed=0)
    stack[2, 16:40, 20:44] = 0
    report = workflow.qc(MaximSettings(folder=str(oracle_dir), device="cpu"), MarkerInput.from_stack(stack, MARKERS))
    assert report.flagged == ["CD3"]
    tuples = shown.qc_tuples(report, "panel", PLACE, {"scale": (0.5, 0.5), "translate": (4.0, 8.0)})
    by_name = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in tuples}
    assert {f"panel · QC disagreement {m}" for m in MARKERS} <= set(by_name)
    rects, kwargs, kind = by_name[shown.boxes_name("panel")]
    assert kind == "shapes" and set(kwargs["features"]["marker"]) == {"CD3"} and kwargs["scale"] == (0.5, 0.5)
    (y0, x0), (y1, x1) = rects[0].min(0), rects[0].max(0)
    assert 12 <= y0 <= 20 and 36 <= y1 <= 44 and 16 <= x0 <= 24 and 40 <= x1 <= 48
    rows = shown.qc_table(report)
    assert rows and all(cells[0] == "CD3" for cells, _ in rows) and ("imputation" in [c[1] for c, _ in rows])
    start, stop = shown.finding_box(next(f for f in report.rows() if "start" in f), stack.shape)
    assert start[0] < stop[0] and start[1] < stop[1]
    assert shown.finding_box({"marker": "CD3"}, stack.shape)[1].tolist() == [64.0, 64.0]


def test_a_folder_without_imputers_gives_the_training_free_checks_from_either_door(tmp_path):
    """Before, the dock ran the training-free checks for such a folder silently and the command
    refused it; now both run them and say why no imputer did."""
    empty = tmp_path / "empty"
    empty.mkdir()
    stack = good_stack(seed=0)
    report = workflow.qc(MaximSettings(folder=str(empty)), MarkerInput.from_stack(stack, MARKERS))
    assert report.markers == {} and "holds no imputers" in report.warnings[0]
    save_tiff(tmp_path / "s.tif", stack, "CYX", MARKERS)
    out = tmp_path / "r.json"
    assert main(["qc", str(tmp_path / "s.tif"), "--models", str(empty), "-o", str(out)]) == 0
    assert "holds no imputers" in json.loads(out.read_text())["warnings"][0]


def test_the_training_patch_fits_the_stack_the_same_way_from_either_door(tmp_path, capsys):
    assert (fitting_patch((64, 64)), fitting_patch((150, 500)), fitting_patch((2000, 2000))) == (32, 64, 96)
    assert MaximSettings(patch=None).train_config((64, 80)).patch == 32
    assert MaximSettings(patch=40).train_config((64, 80)).patch == 40
    stack = good_stack()[:3]
    save_tiff(tmp_path / "s.tif", stack, "CYX", MARKERS[:3])
    out = tmp_path / "trained"
    assert main(["train-imputers", str(tmp_path / "s.tif"), "-o", str(out), "--steps", "1", "--batch-size", "2",
                 "--device", "cpu", "--base", "4", "--depth", "2"]) == 0
    card, _ = checkpoint.read_checkpoint(out / "joint-imputer.pt")
    assert card.training["patch"] == 32  # what the dock trains on a 64 x 64 stack


def test_settings_are_remembered():
    path = settings_file("maxim")
    MaximSettings(folder="/data/imputers", marker="CD3", missing=("Lap2",), threshold=0.3, steps=50).save(path)
    loaded = MaximSettings.load(path)
    assert (loaded.folder, loaded.marker, loaded.missing, loaded.threshold, loaded.steps) == (
        "/data/imputers", "CD3", ("Lap2",), 0.3, 50)
    snapshot = loaded.remember("maxim")
    assert snapshot is not loaded and MaximSettings.load(path) == loaded
