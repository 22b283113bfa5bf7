"""The training-free QC checks added for detection: empty channels, the shifted round named, and
areas of a marker whose failure would make it look unpredictable.

Synthetic multiplex (io.synthetic_multiplex: every channel has some signal pixels, as an
acquisition with background counts has) and one real field (MIBI HER2+ breast fov8 q2, an
EVALUATION field of bench/qc_fields.py; ../shared data must be there).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cell_counts
from napari_virtual_stain.io.synthetic_multiplex import make_multiplex
from napari_virtual_stain.tasks.qc_checks import check_stack, thresholds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.fixture(scope="module")
def synthetic():
    data = make_multiplex((384, 384), seed=3)
    return data["image"].astype(np.uint16), list(data["channel_names"])


def test_an_empty_channel_among_channels_with_signal_is_a_missing_stain(synthetic):
    stack, names = synthetic
    bad = stack.copy()
    bad[names.index("CD45")] = 0
    results = check_stack(bad, names)
    (finding,) = results["CD45"].findings
    assert finding.kind == "missing"
    assert finding.evidence["signal_px"] == 0
    assert finding.evidence["lowest_other_signal_px"] >= thresholds()["min_signal_px"]
    assert finding.sentence.startswith("CD45")
    assert not [m for m, r in results.items() if m != "CD45" and r.findings]


def test_an_empty_channel_beside_another_empty_one_is_not_assessable(synthetic):
    """Two empty channels: an empty channel occurs in this stack, so neither can be told from an absent marker."""
    stack, names = synthetic
    bad = stack.copy()
    bad[names.index("CD45")] = 0
    bad[names.index("CD20")] = 0
    results = check_stack(bad, names, only=["CD45", "CD20"])
    for m in ("CD45", "CD20"):
        assert not results[m].findings and not results[m].assessable
        assert "without a reference" in results[m].not_assessed[0]


def _shifted_marker_and_partner(stack, names, marker, shift):
    bad = stack.copy()
    c = names.index(marker)
    bad[c] = np.roll(bad[c], shift, axis=(0, 1))
    results = check_stack(bad, names)
    return results, {m: [f for f in r.findings if f.kind == "misregistered"] for m, r in results.items()}


def test_a_misregistered_round_is_reported_on_the_shifted_marker_not_its_partner(synthetic):
    stack, names = synthetic
    results, shifted = _shifted_marker_and_partner(stack, names, "CD45", (12, -9))
    assert [m for m, f in shifted.items() if f] == ["CD45"]
    (finding,) = shifted["CD45"]
    assert (finding.evidence["dy"], finding.evidence["dx"]) == (12, -9)


def test_a_real_missing_stain_is_found_where_no_channel_is_empty():
    """breast fov8: every channel has background counts, so an all-zero BetaTubulin (the sabotage of
    sparse counts) is not natural there and is called missing."""
    import qc_fields
    from qc_sabotage import sabotage

    stack, names = qc_fields.load_field("breast-q2", size=384)
    bad, _ = sabotage(stack, names, "BetaTubulin", "missing")
    result = check_stack(bad, names, only=["BetaTubulin"])["BetaTubulin"]
    assert [f.kind for f in result.findings] == ["missing"]
    assert result.findings[0].evidence["ratio"] < thresholds()["missing_floor_ratio"]


def test_a_real_missing_stain_where_channels_are_naturally_empty_is_not_assessable():
    """MIBI DCIS Point2206: several markers have no count at all in the field, so an all-zero channel
    looks like an absent marker and is said to be not assessable, never flagged."""
    import qc_fields
    from qc_sabotage import sabotage

    stack, names = qc_fields.load_field("dcis-2206-q3", size=384)
    bad, _ = sabotage(stack, names, "ECAD", "missing")
    result = check_stack(bad, names, only=["ECAD"])["ECAD"]
    assert not result.findings and not result.assessable


def test_two_markers_shifted_against_each_other_alone_are_both_named():
    """A and B stain the same cells, C and D other cells: shifted A matches only B, and no other marker
    tells which of the two moved. Both are flagged, each saying that one of the two rounds moved."""
    rng = np.random.default_rng(0)
    shape = (512, 512)  # enough cells that C and D match A and B only by chance, equally
    shared = cell_counts(rng, shape, 560, 3000, sigma=4, background=0.5)
    stack = np.stack([shared, rng.binomial(shared, 0.8)] + [cell_counts(rng, shape, 560, 3000, sigma=4, background=0.5)
                                                           for _ in range(2)]).astype(np.uint16)
    names = ["A", "B", "C", "D"]
    clean = check_stack(stack, names)
    assert not [m for m, r in clean.items() if r.findings]
    bad = stack.copy()
    bad[0] = np.roll(bad[0], (11, -9), axis=(0, 1))
    results = check_stack(bad, names)
    flagged = {m: [f for f in r.findings if f.kind == "misregistered"] for m, r in results.items()}
    assert sorted(m for m, f in flagged.items() if f) == ["A", "B"]
    (a,), (b,) = flagged["A"], flagged["B"]
    assert (a.evidence["dy"], a.evidence["dx"]) == (11, -9) and (b.evidence["dy"], b.evidence["dx"]) == (-11, 9)
    assert a.evidence["which_moved_unknown"] and "do not tell which of the two moved" in a.sentence


def test_of_dips_tied_at_the_lowest_level_the_tie_break_judges_the_largest():
    """``tie_break_by_size`` (off in the shipped settings, bench/qc_trial.py): with several separate
    dips at ratio 0, the largest is judged instead of the first in raster order."""
    from napari_virtual_stain.tasks.qc_regions import _candidate_areas
    ratio = np.ones((20, 20))
    ratio[1:3, 1:3] = 0  # a small gap first in raster order
    ratio[10:17, 10:17] = 0  # a larger one further on
    judged = np.ones(ratio.shape, bool)
    first = _candidate_areas(ratio, judged, thresholds({"tie_break_by_size": False}))[0]
    largest = _candidate_areas(ratio, judged, thresholds({"tie_break_by_size": True}))[0]
    assert first.sum() == 4 and first[1, 1]
    assert largest.sum() == 49 and largest[10, 10]
