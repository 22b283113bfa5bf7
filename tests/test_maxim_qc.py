"""Missing-stain QC: a failed channel (or a failed region of one) is flagged, the rest is not.

The imputers are the deterministic oracle of test_maxim_core (the mean of the present
input markers), so these tests check the decision rule itself: blank, noise-filled,
shifted and dimmed channels, and the same failures confined to a region.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_virtual_stain.tasks.maxim_qc import QCSettings, disagreement_regions, run_qc
from napari_virtual_stain.tasks.region import Region
from test_maxim_core import MARKERS, good_stack, oracle_imputers

BAD = 2  # CD3
REGION = (slice(16, 40), slice(20, 44))  # 24 x 24 of 64 x 64


def _qc(stack, reference):
    return run_qc(stack, MARKERS, oracle_imputers(reference), device="cpu")


def _iou(box, sl) -> float:
    by, bx = (box.y0, box.y1), (box.x0, box.x1)
    ty, tx = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
    iy = max(0, min(by[1], ty[1]) - max(by[0], ty[0]))
    ix = max(0, min(bx[1], tx[1]) - max(bx[0], tx[0]))
    inter = iy * ix
    union = (by[1] - by[0]) * (bx[1] - bx[0]) + (ty[1] - ty[0]) * (tx[1] - tx[0]) - inter
    return inter / union


def _whole(stack, rng, kind):
    c = stack[BAD].astype(np.float64)
    if kind == "blank":
        c[:] = 0
    elif kind == "noise":
        c = rng.uniform(c.min(), c.max(), c.shape)
    elif kind == "shift":
        c = np.roll(c, (9, 7), axis=(0, 1))
    elif kind == "dim":
        c = c * 0.25
    stack[BAD] = c.astype(stack.dtype)
    return stack


def _regional(stack, rng, kind):
    c = stack[BAD].astype(np.float64)
    part = c[REGION]
    if kind == "blank":
        part[:] = 0
    elif kind == "noise":
        part[:] = rng.uniform(c.min(), c.max(), part.shape)
    elif kind == "dim":
        part *= 0.2
    stack[BAD] = c.astype(stack.dtype)
    return stack


def test_a_good_stack_raises_no_flag():
    reference = good_stack(seed=1)  # training stack: another field of the same panel
    report = _qc(good_stack(seed=0), reference)
    assert report.flagged == []
    for marker in MARKERS:
        q = report.markers[marker]
        assert q.regions == [] and q.reasons == []
        assert q.scores["pcc"] > 0.9
        # the imputation beats both baselines of paper 003 on good data
        assert q.margin["mae_vs_bl_zero"] > 0.2 and q.scores["ssim"] > q.bl_zero["ssim"]
        assert 0.7 < q.brightness < 1.4


def test_a_darker_stack_as_a_whole_is_not_flagged():
    stack = (good_stack(seed=0) * 0.3).astype(np.uint16)
    assert _qc(stack, good_stack(seed=1)).flagged == []


def test_a_uniformly_dimmer_channel_is_information_not_a_flag():
    """Two regions of one slide differ by 3x in brightness: the ratio to the training stack is
    kept in the report but flags nothing (issue 16)."""
    stack = _whole(good_stack(seed=0), np.random.default_rng(5), "dim")
    report = _qc(stack, good_stack(seed=1))
    assert report.flagged == []
    assert report.markers["CD3"].brightness < 0.5


@pytest.mark.parametrize("kind", ["blank", "noise", "shift"])
def test_a_failed_channel_is_flagged_and_only_that_one(kind):
    rng = np.random.default_rng(5)
    stack = _whole(good_stack(seed=0), rng, kind)
    report = _qc(stack, good_stack(seed=1))
    assert report.flagged == ["CD3"], {m: q.reasons for m, q in report.markers.items()}
    expected_reason = {"blank": "blank", "noise": "structure", "shift": "structure"}[kind]
    assert any(r.startswith(expected_reason) for r in report.markers["CD3"].reasons)
    for marker in MARKERS:
        if marker != "CD3":
            assert report.markers[marker].regions == []
            # judged with the failed CD3 treated as missing (the oracle ignores it then)
            assert report.markers[marker].treated_missing == ["CD3"]


@pytest.mark.parametrize("kind", ["blank", "noise", "dim"])
def test_a_failed_region_of_one_channel_is_flagged_with_its_box(kind):
    rng = np.random.default_rng(6)
    stack = _regional(good_stack(seed=0), rng, kind)
    report = _qc(stack, good_stack(seed=1))
    assert report.flagged == ["CD3"], {m: q.reasons for m, q in report.markers.items()}
    q = report.markers["CD3"]
    assert len(q.regions) == 1, q.regions
    box = q.regions[0]
    assert _iou(box, REGION) > 0.6, box
    assert box.kind == ("stronger" if kind == "noise" else "weaker")
    # the disagreement map is high inside the failed region and low outside it
    inside = q.disagreement[REGION].mean()
    assert inside > 3 * q.disagreement[50:, :].mean()
    for marker in MARKERS:
        if marker != "CD3":
            assert report.markers[marker].regions == [] and not report.markers[marker].flagged


def test_qc_of_a_view_reports_boxes_in_whole_image_pixels():
    rng = np.random.default_rng(7)
    stack = _regional(good_stack(shape=(80, 80), seed=0), rng, "blank")
    reference = good_stack(shape=(80, 80), seed=1)
    view = Region((8, 10), (56, 60))
    report = run_qc(stack, MARKERS, oracle_imputers(reference), region=view, device="cpu")
    assert report.flagged == ["CD3"]
    (box,) = report.markers["CD3"].regions
    assert _iou(box, REGION) > 0.6
    assert report.markers["CD3"].disagreement.shape == (48, 50)


def test_unpredictable_markers_are_reported_not_flagged():
    stack = _whole(good_stack(seed=0), np.random.default_rng(8), "noise")
    report = run_qc(stack, MARKERS, oracle_imputers(good_stack(seed=1), pcc=0.1), device="cpu")
    q = report.markers["CD3"]
    assert not q.assessable and not q.flagged
    assert q.reasons[0].startswith("not assessable")


def test_markers_without_models_are_listed_and_the_report_is_json():
    imputers = oracle_imputers(good_stack(seed=1))
    del imputers["CK"]
    report = run_qc(good_stack(seed=0), MARKERS, imputers, device="cpu")
    assert report.unchecked == ["CK"]
    text = json.dumps(report.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert set(data["markers"]) == set(MARKERS)  # every marker has its training-free checks
    assert "imputation" not in data["markers"]["CK"]
    assert set(data["markers"]["DAPI"]["imputation"]["scores"]) == {"ssim", "pcc", "mae"}
    assert "mae_vs_bl_mean" in data["markers"]["DAPI"]["imputation"]["margin"]


def test_without_a_brightness_reference_the_report_says_so():
    imputers = oracle_imputers(None)
    report = run_qc(good_stack(), MARKERS, imputers, device="cpu")
    assert any("brightness reference" in w for w in report.warnings)
    assert all(q.brightness is None for q in report.markers.values())


def test_disagreement_regions_drop_small_specks():
    acquired = np.zeros((40, 40), np.float32)
    imputed = np.zeros((40, 40), np.float32)
    acquired[5:7, 5:7] = 1.0  # a 2x2 speck
    acquired[20:34, 20:34] = 1.0  # a 14x14 patch
    _, boxes = disagreement_regions(acquired, imputed, threshold=0.2, sigma=1.0, min_area=30, offset=(100, 200))
    assert len(boxes) == 1
    b = boxes[0]
    assert 118 <= b.y0 <= 121 and 133 <= b.y1 <= 136 and 218 <= b.x0 <= 221 and b.kind == "stronger"


def test_failed_markers_are_left_out_of_the_brightness_reference():
    from napari_virtual_stain.tasks.maxim_qc import relative_to_others

    ratios = {"A": 1.0, "B": 2.0, "C": 0.1, "D": 2.3}  # C failed (dark); D is a bright field
    assert relative_to_others(ratios)["D"] == pytest.approx(2.3)
    assert relative_to_others(ratios, exclude=["C"])["D"] == pytest.approx(2.3 / 1.5)
    assert relative_to_others(ratios, exclude=["C"])["C"] == pytest.approx(0.1 / 2.0)


def test_expectations_with_failed_inputs_come_from_the_leave_one_out_scores():
    from napari_virtual_stain.tasks.maxim_qc import _expected
    from test_maxim_core import oracle_card

    card = oracle_card("Ki67")
    card.scores["val_without"] = {"DAPI": {"pcc": 0.2, "mae": 0.09}, "Lap2": {"pcc": 0.9, "mae": 0.04}}
    settings = QCSettings()
    assert _expected(card, settings) == {"pcc": 0.95, "mae": 0.03}
    assert _expected(card, settings, ["Lap2"]) == {"pcc": 0.9, "mae": 0.04}
    # several failed inputs: the worst case; a DAPI-less Ki67 imputer is too poor to judge Ki67
    assert _expected(card, settings, ["Lap2", "DAPI"]) == {"pcc": 0.2, "mae": 0.09}
    assert _expected(card, settings, ["Lap2", "DAPI"])["pcc"] < settings.min_expected_pcc


def test_the_region_threshold_rises_with_the_local_error_of_good_data():
    from napari_virtual_stain.tasks.maxim_qc import local_error_level

    rng = np.random.default_rng(6)
    stack = _regional(good_stack(seed=0), rng, "dim")
    imputers = oracle_imputers(good_stack(seed=1))
    for _, card in imputers.values():
        card.scores["val"]["local_error_p999"] = 0.6  # an imputer that is locally far off even on good data
    report = run_qc(stack, MARKERS, imputers, device="cpu")
    assert report.markers["CD3"].regions == []  # 0.8 x dimming no longer stands out against 0.75
    a = np.zeros((32, 32), np.float32)
    b = a.copy()
    b[8:24, 8:24] = 0.5
    assert 0.3 < local_error_level(a, b) <= 0.5 and local_error_level(a, a) == 0.0


def test_a_marker_only_poisoned_by_a_failed_input_is_cleared():
    import torch

    from napari_virtual_stain.models.factory import register

    @register("test_pick_first")
    class PickFirst(torch.nn.Module):
        """Imputes its first input marker: Ki67 here depends on CD3 alone."""

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x[:, :1].clamp(0, 1)

    stack = _whole(good_stack(seed=0), np.random.default_rng(3), "noise")
    imputers = oracle_imputers(good_stack(seed=1))
    _, ki67 = imputers["Ki67"]
    ki67.architecture = "test_pick_first"
    ki67.input_channels = ["CD3", "DAPI", "Lap2", "CK"]
    ki67.scores["val_without"] = {"CD3": {"pcc": 0.05, "mae": 0.3}}  # without CD3 it knows nothing
    imputers["Ki67"] = (PickFirst(), ki67)
    # A CD3 imputer with a lower expected PCC: CD3's failure then counts as less severe
    # than Ki67's, so the first round wrongly suspects Ki67 first.
    imputers["CD3"][1].scores["val"]["pcc"] = 0.6
    report = run_qc(stack, MARKERS, imputers, device="cpu")
    assert report.flagged == ["CD3"], {m: q.reasons for m, q in report.markers.items()}
    assert report.markers["Ki67"].treated_missing == ["CD3"] and not report.markers["Ki67"].assessable
