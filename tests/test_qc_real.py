"""The training-free stain QC on real multiplex fields: a sabotage matrix on crops of held-out fields.

Fields are 384x384 centre crops of EVALUATION fields of bench/qc_fields.py (MIBI DCIS
Point2206, MIBI HER2+ breast fov8 (three quadrants), DeepLIIF mpIF Lung1 and Bladder1), none of which was
used to fit the thresholds (bench/calibrate_qc.py fits them on DCIS Point2203, granuloma
Point14 and synthetic seed 0). Clean crops flag nothing; each of the five failure classes
of bench/qc_sabotage.py is found on the right marker, with a box where it is, on at least
three real fields (missing: on the two immunofluorescence fields and breast fov8, whose channels
all carry background counts; on MIBI DCIS, where some channels are naturally empty, an all-zero
missing stain looks like an absent marker and is said to be not assessable: tests/test_qc_checks_new.py).
The full matrix with rates is bench/bench_qc.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

SIZE = 384
CLEAN = ["dcis-2206-q3", "breast-q2", "deepliif-lung1", "deepliif-bladder1"]
KNOWN_EMPTY = {"CD3", "CD4", "CD8", "CD20", "ER"}  # breast fov8: the data README says these carry no signal
# (field, class) -> markers the class is applied to in turn; the class must be found on at least one.
MATRIX = {  # marker k of a list gets sabotage seed k (bench/qc_sabotage.py: where the area goes, which shift)
    "blank_region": {"deepliif-lung1": ["DAPI", "Hematoxylin"], "breast-q0": ["NaK_ATPase", "HH3"],
                     "breast-q3": ["NaK_ATPase", "PanKeratin"], "dcis-2206-q3": ["PanKRT", "CK7"]},
    "dim_region": {"deepliif-lung1": ["Hematoxylin", "DAPI"], "breast-q0": ["NaK_ATPase", "PanKeratin", "HH3"],
                   "breast-q3": ["NaK_ATPase", "PanKeratin"], "dcis-2206-q3": ["PanKRT", "CK7"]},
    "missing": {"deepliif-lung1": ["Ki67", "DAPI"], "deepliif-bladder1": ["Ki67", "DAPI"],
                "breast-q3": ["PanKeratin", "HH3"]},
    "noise": {"deepliif-lung1": ["DAPI", "Lap2"], "breast-q2": ["ECadherin", "SMA"], "dcis-2206-q3": ["CD44", "ECAD"]},
    "misregistered": {"deepliif-lung1": ["DAPI", "Lap2"], "breast-q2": ["ECadherin", "HH3"],
                      "dcis-2206-q3": ["HH3", "PanKRT"]},
}
CASES = [(kind, name) for kind, fields in MATRIX.items() for name in fields]


def _field(name):
    import qc_fields

    return qc_fields.load_field(name, size=SIZE)


def _overlaps(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


@pytest.mark.parametrize("name", CLEAN)
def test_a_clean_real_field_flags_nothing(name):
    from napari_virtual_stain.tasks.qc_checks import check_stack

    stack, names = _field(name)
    results = check_stack(stack, names)
    flagged = {m: [f.sentence for f in r.findings] for m, r in results.items() if r.findings and m not in KNOWN_EMPTY}
    assert flagged == {}
    assert sum(r.assessable for r in results.values()) >= 2
    # MIBI channels without signal are said to be not assessable, never flagged
    for r in results.values():
        if not r.assessable:
            assert r.not_assessed and not [f for f in r.findings if f.kind != "saturated"]


@pytest.mark.parametrize("kind, name", CASES)
def test_a_sabotaged_marker_is_flagged_with_its_class_and_place(kind, name):
    from napari_virtual_stain.tasks.qc_checks import check_stack
    from qc_sabotage import sabotage

    stack, names = _field(name)
    accepted = {kind, "noise"} if kind == "missing" else {kind}  # a missing stain over camera noise is noise
    hits = []
    for seed, marker in enumerate(MATRIX[kind][name]):
        bad, box = sabotage(stack, names, marker, kind, seed=seed)
        found = check_stack(bad, names, only=[marker])[marker].findings
        hits.append(any(f.kind in accepted and (box is None or _overlaps(f.box, box)) for f in found))
        for f in found:
            assert f.evidence and f.sentence.startswith(marker)
    assert any(hits), f"{kind} on {MATRIX[kind][name]} of {name} not found"


def test_a_marker_with_natural_gaps_is_not_blamed_for_them():
    """HER2 in breast fov8 is absent from part of the tumour (a HER2-negative area where its membrane
    partners are present): blank there, but it falls almost as low elsewhere, so no area is claimed."""
    from napari_virtual_stain.tasks.qc_checks import check_stack, thresholds

    stack, names = _field("breast-q2")
    result = check_stack(stack, names, only=["HER2"])["HER2"]
    t = thresholds()
    assert result.measures["region_ratio_min"] < t["blank_level"]  # a blank-looking area exists...
    assert result.measures["region_rest_min"] < t["min_rest_blank"]  # ...and the marker is that unsteady elsewhere
    assert not result.findings


def test_a_blanked_tile_of_an_unpredictable_marker_is_found_by_its_straight_edges():
    """SMA in breast fov8 follows no partner well enough to be judged by its level (vessels come and
    go), so a blanked tile of it used to pass; its straight cuts across the tissue give it away."""
    from napari_virtual_stain.tasks.qc_checks import check_stack, thresholds
    from qc_sabotage import sabotage

    stack, names = _field("breast-q2")
    assert not check_stack(stack, names, only=["SMA"])["SMA"].findings
    bad, box = sabotage(stack, names, "SMA", "blank_region", seed=0)
    result = check_stack(bad, names, only=["SMA"])["SMA"]
    (finding,) = [f for f in result.findings if f.kind == "blank_region"]
    assert _overlaps(finding.box, box)
    assert finding.evidence["steady_elsewhere"] is False  # the level rule alone would not have flagged it
    assert len(finding.evidence["cut_sides"]) >= thresholds()["min_cut_sides"]
    assert "straight cuts" in finding.sentence


@pytest.mark.parametrize("corner", [(0, 0), (192, 192)])
def test_a_marker_blank_in_a_whole_quadrant_is_flagged_there(corner):
    """The issue's case: one marker set to its background over a quarter of the field (two of the
    box's sides on the image border, so only two sides can show a cut)."""
    import numpy as np

    from napari_virtual_stain.tasks.qc_checks import check_stack

    stack, names = _field("breast-q0")
    c = names.index("BetaTubulin")
    y, x = corner
    bad = stack.copy()
    bad[c, y:y + 192, x:x + 192] = np.percentile(stack[c], 1)
    result = check_stack(bad, names)
    (finding,) = result["BetaTubulin"].findings
    assert finding.kind == "blank_region"
    y0, x0, y1, x1 = finding.box
    assert (y0, x0, y1, x1) == (y, x, y + 192, x + 192)
    assert sorted(finding.evidence["cut_sides"]) == (["bottom", "right"] if corner == (0, 0) else ["left", "top"])
    clean = check_stack(stack, names)  # (breast fov8 q0's near-empty CD45 is called missing there too)
    assert {m: len(r.findings) for m, r in result.items() if m != "BetaTubulin"} == \
        {m: len(r.findings) for m, r in clean.items() if m != "BetaTubulin"}


def test_the_report_names_class_evidence_and_region(tmp_path):
    from napari_virtual_stain.cli import main
    from napari_virtual_stain.io.tiff_writer import save_tiff
    from qc_sabotage import sabotage

    stack, names = _field("dcis-2206-q3")
    bad, box = sabotage(stack, names, "PanKRT", "blank_region", seed=0)
    path = tmp_path / "bad.tif"
    save_tiff(path, bad, "CYX", names)
    out = tmp_path / "report.json"
    assert main(["qc", str(path), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["flagged"] == ["PanKRT"]
    entry = report["markers"]["PanKRT"]
    (region,) = [r for r in entry["regions"] if r["class"] == "blank_region"]
    y0, x0 = region["start"]
    y1, x1 = region["stop"]
    assert _overlaps((y0, x0, y1, x1), box)
    assert region["evidence"]["observed"] < 0.1 * region["evidence"]["expected"]
    (finding,) = [f for f in entry["findings"] if f["class"] == "blank_region"]
    evidence = finding["evidence"]
    if evidence["steady_elsewhere"]:  # flagged by its level against the rest of the field...
        assert evidence["lowest_ratio_elsewhere"] >= report["thresholds"]["min_rest_blank"]
    else:  # ...or by its straight edges
        assert len(evidence["cut_sides"]) >= report["thresholds"]["min_cut_sides"]
    assert finding["evidence"]["predicted_from"]


def test_further_dips_are_judged_when_asked_so_a_second_failed_tile_is_found_too():
    """``max_candidates`` (off in the shipped settings, bench/qc_trial.py) judges the
    next-lowest separate dips too: of two blanked corner tiles, the lowest-window rule alone finds one."""
    import numpy as np

    from napari_virtual_stain.tasks.qc_checks import check_stack

    stack, names = _field("breast-q0")
    c = names.index("BetaTubulin")
    bad = stack.copy()
    tiles = [(0, 0, 128, 128), (256, 256, 384, 384)]
    for y0, x0, y1, x1 in tiles:
        bad[c, y0:y1, x0:x1] = np.percentile(stack[c], 1)
    shipped = check_stack(bad, names, only=["BetaTubulin"])["BetaTubulin"].findings
    wider = check_stack(bad, names, {"max_candidates": 2}, only=["BetaTubulin"])["BetaTubulin"].findings
    assert len(shipped) == 1 and shipped[0].kind == "blank_region"
    assert sorted(f.kind for f in wider) == ["blank_region", "blank_region"]
    assert all(any(_overlaps(f.box, tile) for f in wider) for tile in tiles)
    assert stack[c, :128, :128].max() > np.percentile(stack[c], 1)  # the input stack was not changed
