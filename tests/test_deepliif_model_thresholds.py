"""A DeepLIIF model's own cell thresholds: chosen on its training rows, kept in its card, used by
default (dock, CLI, workflow) and overridden by any value a user gives; deepliif's elsewhere."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_virtual_stain.cli import main
from napari_virtual_stain.errors import CheckpointError
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.tasks.deepliif_calibration import calibrate, card_entry
from napari_virtual_stain.tasks.deepliif_cells import (AUTO, CARD_KEY, MODEL, Thresholds, model_thresholds,
                                                       resolve_model_values)
from napari_virtual_stain.workflows import deepliif as workflow
from napari_virtual_stain.workflows.deepliif import DeepLIIFSettings

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")
OWN = {"segmentation": 70, "size": 12, "size_upper": 900, "marker": 200}


def tiny_card(name, extra=None):
    card = deepliif_card(name, deepliif_arch_args("small", **TINY), tile=32, overlap=8)
    card.extra.update(extra or {})
    return card


@pytest.fixture
def calibrated(user_models):
    """A tiny DeepLIIF whose card carries its own thresholds, and one without (deepliif's)."""
    torch.manual_seed(0)
    net = DeepLIIFNet(**deepliif_arch_args("small", **TINY)).eval()
    save_checkpoint(user_models / "tiny-own.pt", net, tiny_card("tiny-own", {CARD_KEY: dict(OWN, chosen_on="rows")}))
    save_checkpoint(user_models / "tiny-plain.pt", net, tiny_card("tiny-plain"))
    return "tiny-own", "tiny-plain"


def test_a_card_says_its_thresholds_and_deepliifs_fill_the_rest():
    assert model_thresholds(None) == Thresholds() == model_thresholds(tiny_card("plain"))
    assert model_thresholds(tiny_card("own", {CARD_KEY: OWN})) == Thresholds(70, 12, 900, 200)
    assert model_thresholds(tiny_card("seg", {CARD_KEY: {"segmentation": 90}})) == Thresholds(90, AUTO, None, None)
    with pytest.raises(CheckpointError, match="unusable cell thresholds"):
        model_thresholds(tiny_card("bad", {CARD_KEY: {"segmentation": 900}}))
    asked = Thresholds(MODEL, 5, MODEL, None)  # a user's size and marker rule win over the card's
    assert resolve_model_values(asked, tiny_card("own", {CARD_KEY: OWN})) == Thresholds(70, 5, 900, None)


def test_the_workflow_uses_the_cards_thresholds_unless_told_otherwise(calibrated):
    own, plain = calibrated
    ihc = np.random.default_rng(0).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    result = workflow.run(DeepLIIFSettings(model=own, device="cpu"), ihc)
    assert result.cells.segmentation_threshold == 70
    assert workflow.classify(result, DeepLIIFSettings(model=own)).thresholds == Thresholds(70, 12, 900, 200)
    chosen = DeepLIIFSettings(model=own, device="cpu", seg_threshold=150, size=AUTO, marker=None)
    assert workflow.run(chosen, ihc).cells.segmentation_threshold == 150
    assert workflow.classify(result, chosen).thresholds.size_upper == 900  # what was not given stays the card's
    assert workflow.run(DeepLIIFSettings(model=plain, device="cpu"), ihc).cells.segmentation_threshold == 120
    # the card's size with a user's upper bound below it is said before any network runs
    assert "upper size threshold" in DeepLIIFSettings(model=own, size_upper=10).problems()[0]
    assert DeepLIIFSettings(model=plain, size_upper=10).problems() == []


def test_the_command_line_uses_the_cards_thresholds_and_deepliifs_for_maps(calibrated, tmp_path):
    own, _ = calibrated
    ihc = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "roi.png", ihc)
    keys = ("seg_thresh", "size_thresh", "size_thresh_upper", "marker_thresh")
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "a"), "--model", own,
                 "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "a" / "roi.json").read_text())
    assert [written[k] for k in keys] == [70, 12, 900, 200]
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "b"), "--model", own, "--device", "cpu",
                 "--seg-thresh", "120", "--size-thresh", "default", "--size-thresh-upper", "none",
                 "--marker-thresh", "none"]) == 0
    written = json.loads((tmp_path / "b" / "roi.json").read_text())
    assert [written[k] for k in keys] == [120, written["size_thresh"], None, None]
    assert written["size_thresh"] != 12  # deepliif's automatic rule, not the card's
    seg = np.zeros((40, 40, 3), np.uint8)
    seg[5:15, 5:15] = (255, 0, 0)
    iio.imwrite(tmp_path / "roi_Seg.png", seg)
    iio.imwrite(tmp_path / "roi_Marker.png", seg)
    assert main(["deepliif-cells", str(tmp_path / "roi.png"), "--seg", str(tmp_path / "roi_Seg.png"), "--marker",
                 str(tmp_path / "roi_Marker.png"), "-o", str(tmp_path / "c")]) == 0
    written = json.loads((tmp_path / "c" / "roi.json").read_text())
    assert (written["seg_thresh"], written["size_thresh_upper"], written["marker_thresh"]) == (120, None, None)


def test_a_release_folder_and_an_unreadable_model_get_deepliifs_thresholds(tmp_path):
    from test_workflow_deepliif import release_folder

    assert workflow.recommended_thresholds(str(release_folder(tmp_path / "release"))) == Thresholds()
    assert workflow.recommended_thresholds(str(tmp_path / "nothing-here")) == Thresholds()


def test_the_bundled_model_carries_thresholds_chosen_on_its_training_rows():
    from napari_virtual_stain.models.registry import model_card

    card = model_card("deepliif-small")
    stored = card.extra[CARD_KEY]
    assert "training rows" in stored["chosen_on"] and "384-512" not in stored["chosen_on"]
    assert model_thresholds(card) == workflow.recommended_thresholds("deepliif-small")


def test_calibration_finds_the_cut_a_network_draws_its_cells_at():
    """A method whose cells are drawn at red + blue = 90 finds nothing at deepliif's 120: the
    calibration must cut below 90 (and, the marker rule, keep the classes the truth has)."""
    truth = np.zeros((96, 96, 3), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    centres = [(20, 20, 1), (20, 70, 0), (70, 30, 0), (70, 75, 1)]
    for cy, cx, positive in centres:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= 100
        truth[inside] = (255, 0, 0) if positive else (0, 0, 255)

    def method(rgb):
        seg = np.zeros_like(truth)
        seg[truth[..., 0] > 0] = (90, 0, 0)
        seg[truth[..., 2] > 0] = (0, 0, 90)
        return seg, np.zeros_like(truth)

    images = {"field": (truth, truth, slice(0, 96))}
    chosen, report = calibrate(method, images)
    assert report["deepliif_defaults"]["cells_pred"] == 0 and chosen.segmentation < 90
    assert report["chosen"]["cells_pred"] == 4 and report["chosen"]["dice"] > 0.5  # SegRefined adds outlines
    assert report["chosen"]["percent_positive_diff"] == 0.0
    entry = card_entry(chosen, "a test field")
    assert model_thresholds(ModelCard.from_dict({**tiny_card("c").to_dict(), "extra": {CARD_KEY: entry}})) == chosen


def test_the_dock_shows_the_chosen_models_thresholds_and_its_sliders_still_override(make_napari_viewer, qtbot,
                                                                                    calibrated):
    from napari_virtual_stain.widgets.deepliif_widget import MARKER_MANUAL, MARKER_OFF, WHOLE, DeepLIIFWidget

    own, plain = calibrated
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 256, (48, 48, 3)).astype(np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)  # nothing remembered: the first model listed, with its card's thresholds
    widget.reset_choices()
    widget.model.value = own
    assert (widget.seg_slider.value, widget.size_auto.value, widget.size_slider.value) == (70, False, 12)
    assert (widget.upper_slider.value, widget.marker_mode.value, widget.marker_slider.value) == (900, MARKER_MANUAL, 200)
    assert widget.thresholds() == Thresholds(70, 12, 900, 200) and widget.settings.seg_threshold == MODEL
    widget.model.value = plain  # no thresholds in its card: deepliif's
    assert (widget.seg_slider.value, widget.size_auto.value, widget.marker_mode.value) == (120, True, MARKER_OFF)
    assert widget.thresholds() == Thresholds()
    widget.model.value = own
    widget.scope.value = WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    assert widget.result.cells.segmentation_threshold == 70 and widget.classification.thresholds.size == 12
    widget.seg_slider.value = 140  # the live slider relabels the stored maps at the user's value
    qtbot.waitUntil(lambda: widget.result.cells.segmentation_threshold == 140, timeout=5000)
    widget.size_slider.value = 30
    assert widget.classification.thresholds == Thresholds(140, 30, 900, 200)
    widget.model.value = plain  # what the user set stays; what was left to the model follows it
    assert (widget.seg_slider.value, widget.size_slider.value, widget.marker_mode.value) == (140, 30, MARKER_OFF)
    assert widget.settings.marker == MODEL and widget.settings.seg_threshold == 140
