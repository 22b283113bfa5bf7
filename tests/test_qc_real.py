"""The training-free stain QC on real multiplex fields: clean fields flag nothing, sabotaged ones are found.

Fields are 256x256 centre crops of the EVALUATION fields of bench/qc_fields.py (MIBI DCIS
Point2206, MIBI HER2+ breast fov8, DeepLIIF mpIF Lung1), none of which was used to fit the
thresholds (bench/calibrate_qc.py fits them on DCIS Point2203, granuloma Point14 and
synthetic seed 0). The full matrix with rates is bench/bench_qc.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.skipif(not (DATA / "mibi-dcis" / "Point2206_CYX.tif").exists(),
                                reason="real data ../shared/data (mibi-dcis, mibi-breast, deepliif-sample) not present")

FIELDS = {"dcis-2206-q3": ["CD44", "ECAD"], "breast-q2": ["ECadherin", "SMA"], "deepliif-lung1": ["DAPI", "Lap2"]}
KNOWN_EMPTY = {"CD3", "CD4", "CD8", "CD20", "ER"}  # breast fov8: the data README says these carry no signal


def _field(name):
    import qc_fields

    return qc_fields.load_field(name, size=256)


def _overlaps(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


@pytest.mark.parametrize("name", list(FIELDS))
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


CASES = [(name, kind) for name in FIELDS for kind in ("noise", "misregistered", "blank_region")
         # DCIS Point2206's markers have no background floor: blank areas there are not assessable
         if (name, kind) != ("dcis-2206-q3", "blank_region")]


@pytest.mark.parametrize("name, kind", CASES)
def test_a_sabotaged_marker_is_flagged_with_its_class_and_place(name, kind):
    from napari_virtual_stain.tasks.qc_checks import check_stack
    from qc_sabotage import sabotage

    stack, names = _field(name)
    hits = []
    for seed, marker in enumerate(FIELDS[name]):
        bad, box = sabotage(stack, names, marker, kind, seed=seed)
        found = check_stack(bad, names, only=[marker])[marker].findings
        hits.append(any(f.kind == kind and (box is None or _overlaps(f.box, box)) for f in found))
        for f in found:
            assert f.evidence and f.sentence.startswith(marker)
    assert any(hits), f"{kind} on {FIELDS[name]} of {name} not found"


def test_markers_without_a_floor_say_their_regions_cannot_be_judged():
    from napari_virtual_stain.tasks.qc_checks import check_stack
    from qc_sabotage import sabotage

    stack, names = _field("dcis-2206-q3")
    bad, _ = sabotage(stack, names, "ECAD", "blank_region", seed=0)
    result = check_stack(bad, names, only=["ECAD"])["ECAD"]
    assert not [f for f in result.findings if f.kind == "blank_region"]
    assert any(n.startswith("regions:") and "biology" in n for n in result.not_assessed)


def test_the_report_names_class_evidence_and_region(tmp_path):
    from napari_virtual_stain.cli import main
    from napari_virtual_stain.io.tiff_writer import save_tiff
    from qc_sabotage import sabotage

    stack, names = _field("breast-q2")
    bad, box = sabotage(stack, names, "ECadherin", "blank_region", seed=0)
    path = tmp_path / "bad.tif"
    save_tiff(path, bad, "CYX", names)
    out = tmp_path / "report.json"
    assert main(["qc", str(path), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "ECadherin" in report["flagged"]
    entry = report["markers"]["ECadherin"]
    (region,) = [r for r in entry["regions"] if r["class"] == "blank_region"]
    y0, x0 = region["start"]
    y1, x1 = region["stop"]
    assert _overlaps((y0, x0, y1, x1), box)
    (finding,) = [f for f in entry["findings"] if f["class"] == "blank_region"]
    assert finding["evidence"]["observed"] < 0.2 * finding["evidence"]["expected"]
    assert report["thresholds"]["blank_level"] > 0
