"""Rectangles bounded by straight cuts, found anywhere in the field (tasks/qc_cut_boxes.py), and
step 7 of the area check that flags them (tasks/qc_regions.py; ``box_search``, off in the shipped
settings after its trial on real fields, bench/qc_trial.py, so turned on here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import cell_counts
from napari_virtual_stain.tasks.qc_cut_boxes import cut_boxes, cut_lines
from napari_virtual_stain.tasks.qc_regions import find_low_areas
from napari_virtual_stain.tasks.qc_settings import thresholds

SHAPE = (384, 384)


@pytest.fixture(scope="module")
def cells():
    """A dense marker of cell-sized spots over the whole field (counts, as MIBI gives)."""
    return cell_counts(np.random.default_rng(0), SHAPE, 900, 200).astype(np.float32)


def test_a_blanked_rectangle_is_found_where_it_is_with_four_cut_sides(cells):
    t = thresholds()
    signal = cells.copy()
    signal[100:260, 120:300] = 0
    partners = ndimage.gaussian_filter(cells, 2.0)  # the other markers go on across the failure
    boxes = cut_boxes(signal, partners, t)
    assert boxes and boxes[0]["sides"] == ["bottom", "left", "right", "top"]
    y0, x0, y1, x1 = boxes[0]["box"]
    assert abs(y0 - 100) <= 8 and abs(x0 - 120) <= 24 and abs(y1 - 260) <= 8 and abs(x1 - 300) <= 24


def test_lines_are_reported_in_image_coordinates_on_every_side(cells):
    t = thresholds()
    signal = cells.copy()
    signal[100:260, 120:300] = 0
    partners = ndimage.gaussian_filter(cells, 2.0)
    # the area lies below the top line, above the bottom one, right of the left one, left of the right one
    for side, at in (("top", 100), ("bottom", 260), ("left", 120), ("right", 300)):
        lines = cut_lines(signal, partners, side, t)
        assert any(abs(ln["at"] - at) <= 4 for ln in lines), (side, [ln["at"] for ln in lines])


def test_where_the_partners_stop_too_a_straight_edge_is_a_tissue_boundary(cells):
    """A rectangle of tissue missing from every marker (a tear, the slide's edge) has no cut."""
    t = thresholds()
    signal = cells.copy()
    signal[100:260, 120:300] = 0
    assert cut_boxes(signal, ndimage.gaussian_filter(signal, 2.0), t) == []


def test_a_round_gap_makes_no_rectangle(cells):
    t = thresholds()
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    signal = cells.copy()
    signal[(yy - 180) ** 2 + (xx - 200) ** 2 < 85 ** 2] = 0
    partners = ndimage.gaussian_filter(cells, 2.0)
    assert not [b for b in cut_boxes(signal, partners, t) if len(b["sides"]) >= t["min_cut_sides"]]


def _field_with_a_gap_and_a_failure(rng):
    """A marker and two partners; the marker is naturally absent from two round areas its partners fill
    (predicted there: gaps as deep as a failure, with curved outlines; two, so that the marker is not
    steady elsewhere and its level alone cannot judge a third), and blank in a rectangle."""
    partner = cell_counts(rng, SHAPE, 900, 200).astype(np.float32)
    marker = np.minimum(rng.poisson(partner * 0.8), 50).astype(np.float32)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    marker[(yy - 90) ** 2 + (xx - 90) ** 2 < 60 ** 2] = 0
    marker[(yy - 90) ** 2 + (xx - 290) ** 2 < 55 ** 2] = 0
    failed = marker.copy()
    failed[200:360, 180:360] = 0
    other = rng.poisson(partner * 0.5).astype(np.float32)
    return marker, failed, [partner, other]


def test_a_blank_rectangle_is_flagged_although_a_natural_gap_is_as_low():
    t = thresholds({"box_search": True})
    marker, failed, partners = _field_with_a_gap_and_a_failure(np.random.default_rng(1))
    areas, measures, _ = find_low_areas("M", failed, partners, ["P", "Q"], t)
    boxes = [a["box"] for a in areas if a["kind"] == "blank_region"]
    assert boxes, measures
    y0, x0, y1, x1 = boxes[0]
    assert y0 >= 180 and x0 >= 160 and y1 <= 384 and x1 <= 384  # the failed rectangle, not the round gap
    assert len(areas[0]["evidence"]["cut_sides"]) >= t["min_cut_sides"]


def test_without_the_box_search_the_same_failure_hides_behind_the_gap():
    """What step 7 adds: the lowest dip is a round gap, whose edges are not cut, and the marker is not
    steady elsewhere, so steps 4-6 alone flag nothing here."""
    t = thresholds({"box_search": False})
    marker, failed, partners = _field_with_a_gap_and_a_failure(np.random.default_rng(1))
    areas, _, _ = find_low_areas("M", failed, partners, ["P", "Q"], t)
    assert not [a for a in areas if a["box"][0] >= 180 and a["box"][1] >= 160]


def test_the_clean_marker_with_its_natural_gaps_is_not_flagged():
    t = thresholds({"box_search": True})
    marker, _, partners = _field_with_a_gap_and_a_failure(np.random.default_rng(1))
    areas, _, _ = find_low_areas("M", marker, partners, ["P", "Q"], t)
    assert areas == []
