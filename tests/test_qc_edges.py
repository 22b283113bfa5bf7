"""Straight cuts as the edge evidence of a failed area (tasks/qc_edges.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import cell_counts
from napari_virtual_stain.tasks.qc_edges import cut_sides, side_cut
from napari_virtual_stain.tasks.qc_settings import thresholds


@pytest.fixture(scope="module")
def cells():
    """A dense marker of cell-sized spots over the whole field (counts, as MIBI gives)."""
    return cell_counts(np.random.default_rng(0), (384, 384), 900, 200).astype(np.float32)


def test_a_rectangle_cut_out_of_the_tissue_shows_straight_cuts_on_its_four_sides(cells):
    t = thresholds()
    signal = cells.copy()
    signal[100:260, 120:280] = 0  # a failed tile
    edges = cut_sides(signal, (100, 120, 260, 280), t)
    assert sorted(edges["cut"]) == ["bottom", "left", "right", "top"]
    assert len(edges["cut"]) >= t["min_cut_sides"]


def test_a_box_a_little_off_the_failure_still_finds_its_edges(cells):
    t = thresholds()
    signal = cells.copy()
    signal[100:260, 120:280] = 0
    edges = cut_sides(signal, (112, 128, 252, 272), t)  # block-aligned inside, as qc_regions draws it
    assert len(edges["cut"]) == 4


def test_a_round_hole_in_the_tissue_is_not_cut(cells):
    """A natural hole (a duct's lumen, a vessel) has a curved outline, and the partner markers stop
    along it as well: neither a straight line nor a cut across the tissue."""
    t = thresholds()
    yy, xx = np.mgrid[:384, :384]
    signal = cells.copy()
    signal[(yy - 180) ** 2 + (xx - 200) ** 2 < 85 ** 2] = 0
    partners = ndimage.gaussian_filter(signal, 2.0)
    edges = cut_sides(signal, (120, 140, 240, 260), t, partners)  # the box the windows inside the disc give
    assert edges["cut"] == [] and len(edges["judged"]) == 4


def test_a_gap_inside_an_empty_area_has_no_cut_to_show(cells):
    """Where the marker is absent around the box too (a cell-poor area), nothing outside shows a cut."""
    t = thresholds()
    signal = cells.copy()
    signal[60:320, 60:320] = 0
    edges = cut_sides(signal, (120, 120, 260, 260), t)
    assert edges["cut"] == []


def test_sides_on_the_image_border_are_not_judged(cells):
    t = thresholds()
    signal = cells.copy()
    signal[0:160, 0:160] = 0
    edges = cut_sides(signal, (0, 0, 160, 160), t)
    assert sorted(edges["judged"]) == ["bottom", "right"]
    assert sorted(edges["cut"]) == ["bottom", "right"]
    assert side_cut(signal, (0, 0, 160, 160), "top", float(signal.mean()), t) is None


def test_a_straight_edge_where_the_partners_stop_too_is_a_tissue_boundary_not_a_cut(cells):
    """The marker ends along a straight line, and so does the tissue its partners predict: no cut.
    Where the partners go on across the same line, the marker was cut."""
    t = thresholds()
    signal = cells.copy()
    signal[100:260, 120:280] = 0
    partners_stop = ndimage.gaussian_filter(signal, 2.0)  # the partners say the tissue ends there too
    partners_go_on = ndimage.gaussian_filter(cells, 2.0)
    assert cut_sides(signal, (100, 120, 260, 280), t, partners_stop)["cut"] == []
    # the partners vary cell by cell, so a segment here and there looks like tissue ending: 3 or 4 sides
    assert len(cut_sides(signal, (100, 120, 260, 280), t, partners_go_on)["cut"]) >= max(3, t["min_cut_sides"])


def test_a_sparse_marker_cut_straight_shows_its_cut_pooled_along_the_side():
    """A few counts per segment (sparse MIBI markers): no single strip is sure, the side in all is."""
    signal = cell_counts(np.random.default_rng(1), (384, 384), 500, 20).astype(np.float32)
    signal[100:260, 120:280] = 0
    t = thresholds()
    assert len(cut_sides(signal, (100, 120, 260, 280), t)["cut"]) >= t["min_cut_sides"]
