"""``virtual-stain train-imputers | impute | qc`` end to end on tiny files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.models.checkpoint import save_checkpoint
from test_maxim_core import MARKERS, OracleMean, good_stack, oracle_card
from napari_virtual_stain.tasks.maxim import stack_marker_stats


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "models"
    stats = stack_marker_stats(good_stack(seed=1), MARKERS)
    for m in MARKERS:
        save_checkpoint(folder / f"imputer-{m}.pt", OracleMean(), oracle_card(m, stats=stats))
    return folder


def _write(path, stack, names=MARKERS):
    save_tiff(path, stack, "CYX", names)
    return str(path)


def test_qc_reports_a_blanked_region_as_json_and_maps(tmp_path, model_dir, capsys):
    good = _write(tmp_path / "good.tif", good_stack(seed=0))
    bad_stack = good_stack(seed=0)
    bad_stack[2, 16:40, 20:44] = 0
    bad = _write(tmp_path / "bad.tif", bad_stack)
    report = tmp_path / "report.json"
    assert main(["qc", good, bad, "--models", str(model_dir), "-o", str(report), "--device", "cpu",
                 "--fail-on-flag"]) == 1
    data = json.loads(report.read_text())["stacks"]
    assert data[good]["flagged"] == [] and data[bad]["flagged"] == ["CD3"]
    (box,) = data[bad]["markers"]["CD3"]["regions"]
    assert 12 <= box["start"][0] <= 20 and 36 <= box["stop"][0] <= 44 and box["class"] == "imputation"
    (finding,) = [f for f in data[bad]["markers"]["CD3"]["findings"] if "start" in f]
    assert "weaker" in finding["sentence"] and finding["evidence"]["area"] > 100
    assert "CD3 FLAGGED" in capsys.readouterr().err

    maps = tmp_path / "maps.tif"
    assert main(["qc", bad, "--models", str(model_dir), "-o", str(report), "--maps", str(maps), "--device", "cpu"]) == 0
    assert json.loads(report.read_text())["flagged"] == ["CD3"]
    image = load_image(maps)
    assert image.channel_names[2] == "CD3 disagreement"
    assert np.asarray(image.data)[2, 20:36, 24:40].mean() > 3 * np.asarray(image.data)[0].mean()


def test_impute_writes_the_marker(tmp_path, model_dir):
    stack = _write(tmp_path / "s.tif", good_stack())
    out = tmp_path / "ki67.tif"
    assert main(["impute", stack, "--models", str(model_dir), "--marker", "ki67", "-o", str(out), "--device", "cpu"]) == 0
    image = load_image(out)
    assert image.axes == "YX" and np.asarray(image.data).shape == (64, 64)
    assert np.corrcoef(np.asarray(image.data).ravel(), good_stack()[3].ravel().astype(float))[0, 1] > 0.95


def test_user_errors_are_one_line_with_status_2(tmp_path, model_dir, capsys):
    single = tmp_path / "one.tif"
    save_tiff(single, good_stack()[0], "YX")
    assert main(["qc", str(single), "--models", str(model_dir), "-o", str(tmp_path / "r.json")]) == 2
    assert "single channel" in capsys.readouterr().err
    lacking = _write(tmp_path / "lacking.tif", good_stack()[:4], MARKERS[:4])
    assert main(["qc", lacking, "--models", str(model_dir), "-o", str(tmp_path / "r.json")]) == 2
    assert "has no CK" in capsys.readouterr().err
    stack = _write(tmp_path / "s.tif", good_stack())
    assert main(["impute", stack, "--models", str(model_dir), "--marker", "CD8", "-o", str(tmp_path / "o.tif")]) == 2
    assert "no imputer for CD8" in capsys.readouterr().err
    assert main(["qc", stack, "--names", "a,b,a,c,d", "--models", str(model_dir), "-o", str(tmp_path / "r.json")]) == 2
    assert "more than once" in capsys.readouterr().err


def test_train_imputers_writes_the_joint_imputer_and_prints_its_held_out_errors(tmp_path, capsys):
    stack = _write(tmp_path / "s.tif", good_stack()[:3], MARKERS[:3])
    out = tmp_path / "trained"
    assert main(["train-imputers", stack, "-o", str(out), "--steps", "2", "--patch", "32",
                 "--batch-size", "2", "--device", "cpu", "--base", "4", "--depth", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.pt")) == ["joint-imputer.pt"]
    err = capsys.readouterr().err
    for marker in MARKERS[:3]:
        assert f"  {marker}: held-out MAE" in err and "mean of other markers" in err
    from napari_virtual_stain.models.checkpoint import read_checkpoint

    card, _ = read_checkpoint(out / "joint-imputer.pt")
    assert card.extra["joint"] and card.output_channels == MARKERS[:3] and card.arch_args["in_channels"] == 6
    assert card.arch_args["base"] == 4 and set(card.scores["per_marker"]) == set(MARKERS[:3])
    # a second run into the same folder needs --overwrite
    assert main(["train-imputers", stack, "-o", str(out), "--steps", "1", "--patch", "32", "--device", "cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_impute_with_a_missing_marker_the_stack_lacks_is_an_error(tmp_path, model_dir, capsys):
    stack = _write(tmp_path / "s.tif", good_stack(), MARKERS)
    out = tmp_path / "o.tif"
    assert main(["impute", stack, "--models", str(model_dir), "--marker", "CD3", "--missing", "CD99",
                 "-o", str(out)]) == 2
    assert "no marker 'CD99'" in capsys.readouterr().err and not out.exists()


def test_qc_names_an_imputer_file_that_does_not_load_and_still_runs(tmp_path, capsys):
    stack = _write(tmp_path / "s.tif", good_stack(), MARKERS)
    models = tmp_path / "models"
    models.mkdir()
    (models / "joint-imputer.pt").write_bytes(b"not a checkpoint")
    report = tmp_path / "r.json"
    assert main(["qc", stack, "--models", str(models), "-o", str(report)]) == 0
    assert "joint-imputer.pt" in capsys.readouterr().err
    data = json.loads(report.read_text())
    assert any("joint-imputer.pt" in w for w in data["warnings"]) and "flagged" in data


def test_cell_scores_from_the_shell_equal_the_docks(tmp_path, model_dir):
    """Cell evaluation is no longer reachable from the MAXIM dock alone."""
    from napari_virtual_stain.models.checkpoint import load_checkpoint
    from napari_virtual_stain.tasks.maxim_cells import score_imputer_on_cells

    stack = good_stack(seed=0)
    path = _write(tmp_path / "s.tif", stack)
    labels = np.zeros(stack.shape[1:], np.uint16)
    for i, (y, x) in enumerate([(10, 10), (10, 40), (40, 10), (40, 40), (25, 60)]):
        labels[y:y + 8, x:x + 8] = i + 1
    save_tiff(tmp_path / "labels.tif", labels, "YX")
    out = tmp_path / "cells.json"
    assert main(["cell-scores", path, "--models", str(model_dir), "--marker", "CD3", "--labels",
                 str(tmp_path / "labels.tif"), "-o", str(out), "--device", "cpu"]) == 0
    scores = json.loads(out.read_text())
    model, card = load_checkpoint(model_dir / "imputer-CD3.pt")
    direct = score_imputer_on_cells(model, card, stack, MARKERS, labels, device="cpu").summary()
    assert scores["marker"] == "CD3" and scores["cells"] == 5
    assert scores["mae"] == pytest.approx(direct["mae"]) and "BL-Mean_mae" in scores
    wrong = np.zeros((7, 7), np.uint16)
    save_tiff(tmp_path / "small.tif", wrong, "YX")
    assert main(["cell-scores", path, "--models", str(model_dir), "--marker", "CD3", "--labels",
                 str(tmp_path / "small.tif"), "-o", str(tmp_path / "x.json"), "--device", "cpu"]) == 2
    assert not (tmp_path / "x.json").exists()
