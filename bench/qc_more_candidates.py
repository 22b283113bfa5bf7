"""Experiment: judge the next-lowest separate dips of a marker too, not only its lowest window.

    python bench/qc_more_candidates.py [--candidates 2]

Why: the area check (``tasks/qc_regions.py``) judges one candidate area per marker, around its
lowest window. On the evaluation fields a blanked box is often not that candidate: a natural
gap elsewhere is as low (both at ratio 0; e.g. dcis-2206-q0:ECAD), so the failure is never
looked at. ``max_candidates`` (a setting of qc_regions, shipped at 0) judges up to that many
further dips below ``dim_level``, each by the same rules (steady elsewhere, or straight cuts).

Adoption rule (the one the earlier QC experiments used; written down here after a first trial
run on the evaluation fields, so it is not blind to that run): ship ``max_candidates`` > 0 only if, on the EVALUATION
fields of bench/qc_fields.py, detected-of-detectable rises for blank or dimmed areas and falls
for no class, and neither the clean-field false flags (EVALUATION and CALIBRATION fields) nor the
false flags on other markers of any class rise. Both settings run here, in one run, through
bench/bench_qc.py's matrix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_results  # noqa: E402

import torch  # noqa: E402

import bench_qc  # noqa: E402
import qc_fields  # noqa: E402
from qc_sabotage import CLASSES  # noqa: E402


def summary(fields, candidates):
    rows, clean, other, _, _ = bench_qc.run(fields, settings={"max_candidates": candidates})
    return {"rows": {k: (rows[k]["hit_detectable"], rows[k]["detectable"], other.get(k, 0)) for k in CLASSES},
            "clean": (len(clean["false"]), clean["judged"], clean["false"])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=2, help="further dips judged in the trial (default 2)")
    args = parser.parse_args()
    if args.candidates < 1:
        parser.error("--candidates must be at least 1 (0 is the shipped setting it is compared with)")
    torch.set_num_threads(1)
    start = time.perf_counter()
    ev = {c: summary(qc_fields.EVALUATION, c) for c in (0, args.candidates)}
    cal = {c: summary(qc_fields.CALIBRATION, c)["clean"] for c in (0, args.candidates)}
    new, old = ev[args.candidates], ev[0]
    gain = any(new["rows"][k][0] > old["rows"][k][0] for k in ("blank_region", "dim_region"))
    loss = any(new["rows"][k][0] < old["rows"][k][0] for k in CLASSES)
    more_false = (new["clean"][0] > old["clean"][0] or cal[args.candidates][0] > cal[0][0]
                  or any(new["rows"][k][2] > old["rows"][k][2] for k in CLASSES))
    adopt = gain and not loss and not more_false
    lines = [f"Machine: {machine()}.",
             f"Command: `python bench/qc_more_candidates.py --candidates {args.candidates}` "
             f"({time.perf_counter() - start:.0f} s in all). Fields: bench/qc_fields.py EVALUATION (matrix) and "
             "CALIBRATION (clean false flags). Rule (docstring; written down after a first trial run on the "
             "evaluation fields): detection of blank or dimmed areas up, "
             "no class down, no false-flag count up.", "",
             "| class | detected of detectable, lowest dip only (shipped) | with further dips | false flags on other "
             "markers, shipped | with further dips |", "|---|---|---|---|---|"]
    for k in CLASSES:
        (h0, d0, f0), (h1, d1, f1) = old["rows"][k], new["rows"][k]
        lines.append(f"| {k} | {h0}/{d0} | {h1}/{d1} | {f0} | {f1} |")
    lines.append(f"| clean evaluation fields | | | {old['clean'][0]} of {old['clean'][1]} | "
                 f"{new['clean'][0]} of {new['clean'][1]} |")
    lines.append(f"| clean calibration fields | | | {cal[0][0]} of {cal[0][1]} | "
                 f"{cal[args.candidates][0]} of {cal[args.candidates][1]} |")
    lines += ["", f"Verdict: {'adopt' if adopt else 'not adopted'} (detection gain {gain}, loss {loss}, "
              f"more false flags {more_false}). New clean false flags on the evaluation fields: "
              f"{sorted(set(new['clean'][2]) - set(old['clean'][2])) or 'none'}."]
    text = "\n".join(lines)
    print(text)
    update_results("Stain QC: judging further dips (experiment, qc_more_candidates.py)", text)


if __name__ == "__main__":
    main()
