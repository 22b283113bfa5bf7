"""The joint MAXIM imputer on real fields: held-out error per marker against BL-Mean, and what its
imputation check adds to the training-free QC on the sabotage matrix.

    python bench/bench_joint_imputer.py [--minutes 3] [--targets 2]

For each slide the joint imputer is trained on one field (``TRAIN``) for ``--minutes`` on this
CPU (1 thread) and scored on its held-out rows (the last 20% of that field's height: split by
region). The QC then judges another field of the same slide (``JUDGE``, never trained on):
clean, and with each of the five sabotage classes of bench/qc_sabotage.py applied to
``--targets`` markers (the markers bench/bench_qc.py picks). Detection is counted for the
training-free checks alone and with the imputation check (a finding of the class, or an
imputation finding on that marker; areas: a box overlapping the sabotaged one).
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
from napari_virtual_stain.tasks.maxim_joint import joint_views  # noqa: E402
from napari_virtual_stain.tasks.maxim_qc import run_qc  # noqa: E402
from napari_virtual_stain.tasks.qc_checks import check_stack  # noqa: E402
from napari_virtual_stain.training.joint_imputer import JointImputerConfig, train_joint_imputer  # noqa: E402

PAIRS = [("dcis-2206-q0", "dcis-2206-q3"), ("breast-q0", "breast-q2"), ("deepliif-bladder1", "deepliif-lung1")]
KNOWN_EMPTY = {"CD3", "CD4", "CD8", "CD20", "ER"}  # breast fov8 (data README); not counted as false


def _overlaps(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _hits(report, marker, kind, box):
    accepted = {kind, "noise"} if kind == "missing" else {kind}
    free = [f for f in report.findings(marker) if f["class"] in accepted
            and (box is None or ("start" in f and _overlaps((*f["start"], *f["stop"]), box)))]
    imputed = [f for f in report.findings(marker) if f["class"] == "imputation"
               and (box is None or "start" not in f or _overlaps((*f["start"], *f["stop"]), box))]
    return bool(free), bool(free or imputed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--targets", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    imputer_rows, qc_rows, clean_lines = [], defaultdict(lambda: [0, 0, 0]), []
    train_seconds, qc_seconds = [], []
    for train_name, judge_name in PAIRS:
        stack, names = qc_fields.load_field(train_name)
        result = train_joint_imputer(stack, names, None, config=JointImputerConfig(minutes=args.minutes, device="cpu"))
        train_seconds.append((train_name, result.seconds, result.steps))
        for m, v in result.per_marker.items():
            if "imputer" in v:
                imputer_rows.append((train_name, m, v["imputer"], v["bl_mean"], v["counts"]))
        counting = [m for m, v in result.per_marker.items() if v.get("counts")]
        views = joint_views(result.model, result.card, counting)
        judge, jnames = qc_fields.load_field(judge_name)
        t0 = time.perf_counter()
        clean = run_qc(judge, jnames, views, device="cpu")
        qc_seconds.append(time.perf_counter() - t0)
        false = [f"{m}:{f['class']}" for m in clean.flagged if m not in KNOWN_EMPTY for f in clean.findings(m)]
        clean_lines.append(f"{judge_name}: {len(clean.markers)} markers with a counting imputation check; "
                           f"false flags {len(false)}{': ' + ', '.join(false) if false else ''}")
        free = check_stack(judge, jnames)
        for k, marker in enumerate(targets(free, n=args.targets)):
            for kind in CLASSES:
                bad, box = sabotage(judge, jnames, marker, kind, seed=k)
                report = run_qc(bad, jnames, views, device="cpu")
                alone, joint = _hits(report, marker, kind, box)
                row = qc_rows[kind]
                row[0] += 1
                row[1] += alone
                row[2] += joint
        print(f"{train_name} -> {judge_name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    lines = [f"Machine: {machine()}.",
             f"Command: `python bench/bench_joint_imputer.py --minutes {args.minutes:g} --targets {args.targets}` "
             f"({time.perf_counter() - start:.0f} s in all).",
             "Trained on one field, scored on its held-out rows (last 20% of the height); the QC judges another "
             "field of the slide: " + ", ".join(f"{a} -> {b}" for a, b in PAIRS) + ".", "",
             "### Held-out error per marker: joint imputer vs BL-Mean (the mean of the other markers)", "",
             "| trained on | marker | MAE imputer | MAE BL-Mean | PCC imputer | PCC BL-Mean | check counts |",
             "|---|---|---|---|---|---|---|"]
    for field, m, mine, base, counts in imputer_rows:
        lines.append(f"| {field} | {m} | {mine['mae']:.4f} | {base['mae']:.4f} | {mine['pcc']:.2f} | {base['pcc']:.2f} "
                     f"| {'yes' if counts else 'no'} |")
    n_counts = sum(r[4] for r in imputer_rows)
    lines += ["", f"The imputation check counts for {n_counts} of {len(imputer_rows)} scored markers.",
              "Training: " + ", ".join(f"{f} {s:.0f} s ({n} steps)" for f, s, n in train_seconds)
              + "; QC of a clean field with the imputer: " + ", ".join(f"{s:.0f} s" for s in qc_seconds)
              + " (1 thread, shared machine).", "", "### Sabotage matrix on the judged fields", "",
              "| class | sabotaged markers | detected, training-free alone | detected, with the imputation check |",
              "|---|---|---|---|"]
    for kind in CLASSES:
        n, a, j = qc_rows[kind]
        lines.append(f"| {kind} | {n} | {a} ({a / max(n, 1):.0%}) | {j} ({j / max(n, 1):.0%}) |")
    lines += ["", "Clean judged fields with the imputer: " + "; ".join(clean_lines) + "."]
    text = "\n".join(lines)
    print(text)
    title = "Joint MAXIM imputer: held-out error per marker and the QC (bench_joint_imputer.py)"
    update_results(title, text)


if __name__ == "__main__":
    main()
