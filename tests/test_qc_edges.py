"""Straight cuts as the edge evidence of a failed area (tasks/qc_edges.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_virtual_stain.tasks.qc_edges import cut_sides, side_cut
from napari_virtual_stain.tasks.qc_settings import thresholds


@pytest.fixture(scope="module")
def cells():
    """A dense marker of cell-sized spots over the whole field (counts, as MIBI gives)."""
    rng = np.random.default_rng(0)
    centres = np.zeros((384, 384))
    centres[rng.integers(0, 384, 900), rng.integers(0, 384, 900)] = 1
    density = ndimage.gaussian_filter(centres, 3) * 200
    return rng.poisson(density).astype(np.float32)


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


def test_a_round_gap_is_not_cut_straight(cells):
    """A natural gap (a duct, a vessel) has a curved outline: a straight line meets it here and there."""
    t = thresholds()
    yy, xx = np.mgrid[:384, :384]
    signal = cells.copy()
    signal[(yy - 180) ** 2 + (xx - 200) ** 2 < 85 ** 2] = 0
    edges = cut_sides(signal, (120, 140, 240, 260), t)  # the box the windows inside the disc give
    assert len(edges["cut"]) < t["min_cut_sides"]


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
