"""The classical DeepLIIF baseline, the one scorer, and `virtual-stain evaluate` showing the baseline."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.synthetic_ihc import make_ihc
from napari_virtual_stain.seg_metrics import classified_mask_scores
from napari_virtual_stain.tasks.deepliif_classical import classical_maps
from napari_virtual_stain.tasks.deepliif_evaluation import (CLASSICAL, format_table, refined_mask,
                                                            score_table, summarise)
from napari_virtual_stain.training.deepliif_samples import classes_from_labels


def truth_mask(field) -> np.ndarray:
    classes = classes_from_labels(field["labels"], field["positive"])
    rgb = np.zeros(classes.shape + (3,), np.uint8)
    rgb[classes == 2], rgb[classes == 1], rgb[classes == 3] = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    return rgb


@pytest.fixture(scope="module")
def field():
    return make_ihc((256, 256), seed=3, positive_fraction=0.4)


def test_classical_baseline_finds_the_nuclei_of_a_synthetic_field(field):
    before = field["rgb"].copy()
    scores = classified_mask_scores(refined_mask(*classical_maps(field["rgb"])), truth_mask(field))
    assert np.array_equal(field["rgb"], before)  # the input is not changed
    assert scores["dice"] > 0.6 and scores["aji"] > 0.3
    assert 0.6 * scores["cells_true"] <= scores["cells_pred"] <= 1.4 * scores["cells_true"]
    assert abs(scores["percent_positive_diff"]) < 20  # DAB-positive nuclei are called positive


def test_classical_baseline_on_blank_tissue_finds_nothing():
    seg, marker = classical_maps(np.full((64, 64, 3), 240, np.uint8))
    assert not seg.any() and seg.shape == marker.shape == (64, 64, 3)


def test_pale_counterstain_keeps_its_nuclei(field):
    """A threshold computed on the image itself: a field with half the hematoxylin still has its nuclei."""
    pale = field["rgb"].astype(np.float64)
    od = -np.log10(np.maximum(pale, 1) / 255.0) * 0.5
    pale = np.clip(np.rint(255 * 10 ** -od), 0, 255).astype(np.uint8)
    normal = classified_mask_scores(refined_mask(*classical_maps(field["rgb"])), truth_mask(field))
    faint = classified_mask_scores(refined_mask(*classical_maps(pale)), truth_mask(field))
    assert faint["cells_pred"] >= 0.7 * normal["cells_pred"]


def test_score_table_scores_every_method_on_the_held_out_rows_only(field):
    truth = truth_mask(field)
    perfect = lambda rgb: (truth, np.zeros_like(truth))  # noqa: E731 - a method that knows the answer
    empty = lambda rgb: (np.zeros_like(truth), np.zeros_like(truth))  # noqa: E731
    rows = slice(128, None)
    table = score_table({"perfect": perfect, "empty": empty, CLASSICAL: classical_maps},
                        {"f": (field["rgb"], truth, rows)})
    assert table["perfect"]["mean"]["dice"] > 0.9  # deepliif redraws the borders: not exactly 1
    assert table["empty"]["mean"]["cells_pred"] == 0 and table["empty"]["mean"]["dice"] == 0
    assert table["perfect"]["mean"]["cells_true"] == classified_mask_scores(truth[rows], truth[rows])["cells_true"]
    text = format_table(table)
    assert text.count("\n") == 4 and CLASSICAL in text  # header, rule and one row per method


def test_summary_takes_the_absolute_percent_positive_difference():
    s = summarise({"a": {"dice": 0.5, "aji": 0.2, "percent_positive_diff": -10.0, "cells_pred": 3, "cells_true": 4},
                   "b": {"dice": 0.7, "aji": 0.4, "percent_positive_diff": 20.0, "cells_pred": 5, "cells_true": 5}})
    assert s == {"dice": 0.6, "aji": 0.3, "percent_positive_diff": 15.0, "cells_pred": 8, "cells_true": 9}


def test_evaluate_shows_the_classical_baseline_next_to_the_prediction(tmp_path, field, capsys):
    truth = truth_mask(field)
    six = np.concatenate([field["rgb"]] + [np.zeros_like(truth)] * 4 + [truth], axis=1)
    iio.imwrite(tmp_path / "f.png", six)
    iio.imwrite(tmp_path / "f_SegRefined.png", truth)
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    (tmp_path / "f_SegRefined.png").rename(tmp_path / "pred" / "f_SegRefined.png")
    (tmp_path / "f.png").rename(tmp_path / "truth" / "f.png")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "classical" in out and "prediction" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    expected = classified_mask_scores(refined_mask(*classical_maps(field["rgb"])), truth)
    assert saved["classical"]["images"]["f"]["dice"] == expected["dice"]
    assert saved["images"]["f"]["dice"] == 1.0


def test_evaluate_takes_the_ihc_from_a_folder_for_bare_masks(tmp_path, field, capsys):
    truth = truth_mask(field)
    for folder in ("pred", "truth", "ihc"):
        (tmp_path / folder).mkdir()
    iio.imwrite(tmp_path / "pred" / "f.png", truth)
    iio.imwrite(tmp_path / "truth" / "f.png", truth)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth")]) == 0
    assert "no classical baseline" in capsys.readouterr().err  # says why the row is missing
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--ihc", str(tmp_path / "ihc")])
    assert code == 2 and "no IHC image for f.png" in capsys.readouterr().err
    iio.imwrite(tmp_path / "ihc" / "f.png", field["rgb"])
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--ihc", str(tmp_path / "ihc")]) == 0
    assert "classical" in capsys.readouterr().out
