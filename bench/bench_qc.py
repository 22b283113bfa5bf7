"""Sabotage matrix of the stain QC on real fields: detection and false-flag rate per failure class.

    python bench/bench_qc.py [--fields evaluation|calibration|all]

For each field (bench/qc_fields.py; the default EVALUATION fields were not used to fit the
thresholds), the clean stack is checked (false flags), then each of the five classes of
bench/qc_sabotage.py is applied in turn to up to four target markers (every 3rd judgeable
marker ranked by signal) and checked again. A sabotage counts as detected when the target
marker gets a finding of that class (for areas: a box that overlaps the sabotaged one);
findings on any other marker are false flags. Times are wall seconds of the whole QC of a
field on this machine (1 thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_results  # noqa: E402

import torch  # noqa: E402

import qc_fields  # noqa: E402
from calibrate_qc import targets  # noqa: E402
from qc_sabotage import CLASSES, sabotage  # noqa: E402
from napari_virtual_stain.tasks.qc_checks import check_stack  # noqa: E402

# Channels the data README says carry almost no signal: findings there are true, not false flags.
KNOWN_EMPTY = {"breast": {"CD3", "CD4", "CD8", "CD20", "ER"}}
# The previous checks (commit 8cd9617, same fields and sabotages): detection per class, clean false flags.
BEFORE = {"blank_region": (16, 43, 1), "dim_region": (14, 43, 1), "missing": (11, 43, 4), "noise": (42, 43, -2),
          "misregistered": (21, 43, 13)}
BEFORE_CLEAN = (8, 181)


def overlaps(a, b):
    return a is not None and b is not None and min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def run(fields):
    rows = defaultdict(lambda: {"trials": 0, "hit": 0, "not_assessable": 0, "judged_others": 0})
    clean = {"fields": 0, "markers": 0, "judged": 0, "false": [], "known_empty": []}
    other_false = defaultdict(int)
    seconds = []
    for name in fields:
        stack, names = qc_fields.load_field(name)
        t0 = time.perf_counter()
        res = check_stack(stack, names)
        seconds.append(time.perf_counter() - t0)
        clean["fields"] += 1
        clean["markers"] += len(res)
        clean["judged"] += sum(r.assessable for r in res.values())
        empty = KNOWN_EMPTY.get(name.rsplit("-q", 1)[0], set())
        for m, r in res.items():
            for f in r.findings:
                (clean["known_empty"] if m in empty else clean["false"]).append(f"{name}:{m}:{f.kind}")
        for k, marker in enumerate(targets(res)):
            for kind in CLASSES:
                bad, box = sabotage(stack, names, marker, kind, seed=k)
                out = check_stack(bad, names)
                row = rows[kind]
                row["trials"] += 1
                # a missing stain over noisy background has no structure but a spread: reported as noise
                accepted = {kind, "noise"} if kind == "missing" else {kind}
                got = [f for f in out[marker].findings if f.kind in accepted and (box is None or overlaps(f.box, box))]
                if kind == "missing" and not got and not out[marker].assessable:
                    row["not_assessable"] += 1
                row["hit"] += bool(got)
                row["judged_others"] += sum(1 for m, r in out.items() if m != marker and r.assessable)
                for m, r in out.items():
                    if m != marker and m not in empty:
                        other_false[kind] += sum(1 for f in r.findings) - sum(1 for f in res[m].findings)
    return rows, clean, other_false, seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", default="evaluation", choices=["evaluation", "calibration", "all"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    fields = {"evaluation": qc_fields.EVALUATION, "calibration": qc_fields.CALIBRATION,
              "all": qc_fields.CALIBRATION + qc_fields.EVALUATION}[args.fields]
    start = time.perf_counter()
    rows, clean, other, seconds = run(fields)
    judged = max(clean["judged"], 1)
    lines = [f"Machine: {machine()}.",
             f"Command: `python bench/bench_qc.py --fields {args.fields}` ({time.perf_counter() - start:.0f} s in all).",
             f"Fields ({args.fields}): {', '.join(fields)} (512x512 each).",
             f"Calibration fields (bench/calibrate_qc.py): {', '.join(qc_fields.CALIBRATION)}.", "",
             "Detection: the sabotaged marker gets a finding of its class (areas: a box overlapping the sabotaged one). "
             "False flags per class: findings on the *other* markers of the sabotaged stack that the clean stack did not "
             "have, per judged marker of those stacks. Before: the checks of commit 8cd9617 (floor-based areas).", "",
             "| class | sabotaged markers | detected now | detection now | detection before | false flags now (other markers) | before |",
             "|---|---|---|---|---|---|---|"]
    for kind in CLASSES:
        r = rows[kind]
        hit, n, other_before = BEFORE[kind]
        rate = f"{other[kind]} ({other[kind] / max(r['judged_others'], 1):.1%})"
        lines.append(f"| {kind} | {r['trials']} | {r['hit']} | {r['hit'] / max(r['trials'], 1):.0%} | {hit / n:.0%} "
                     f"| {rate} | {other_before} |")
    lines.append(f"| clean fields | {clean['judged']} judged markers | | | | {len(clean['false'])} "
                 f"({len(clean['false']) / judged:.1%}) | {BEFORE_CLEAN[0]} ({BEFORE_CLEAN[0] / BEFORE_CLEAN[1]:.1%}) |")
    lines += ["", f"Clean fields: {clean['fields']}, {clean['markers']} channels, {clean['judged']} judged "
              f"(the rest: almost no signal, or not a marker stain). False flags: {len(clean['false'])}: "
              f"{', '.join(clean['false']) or 'none'}.",
              f"Findings on channels the data README calls empty (true findings, not counted as false): "
              f"{', '.join(clean['known_empty']) or 'none'}.",
              f"Missing stains that became 'not assessable' (all background: sparse MIBI counts, where a missing "
              f"stain and an absent marker look the same): {rows['missing']['not_assessable']} of "
              f"{rows['missing']['trials']}.",
              f"QC time per 512x512 field (training-free checks, all channels, 1 thread, shared machine): median "
              f"{sorted(seconds)[len(seconds) // 2]:.1f} s, max {max(seconds):.1f} s. Training: none needed."]
    text = "\n".join(lines)
    print(text)
    title = f"Stain QC sabotage matrix, {args.fields} fields (bench_qc.py)"
    update_results(title, text)


if __name__ == "__main__":
    main()
