"""Experiment: the stain QC with one setting changed against the shipped settings, with a verdict.

    python bench/qc_trial.py --set KEY=VALUE [--set KEY=VALUE ...]

Trials run so far (bench/RESULTS.md):

- ``--set max_candidates=2``: judge the next-lowest separate dips of a marker too, not only its
  lowest window. On the evaluation fields a blanked box is often not that candidate: a natural
  gap elsewhere is as low (both at ratio 0; e.g. dcis-2206-q0:ECAD), so the failure is never
  looked at (``tasks/qc_regions.py``, steps 4-6).
- ``--set box_search=true``: step 7 of ``tasks/qc_regions.py``, blank rectangles bounded by
  straight cuts found anywhere in the field (``tasks/qc_cut_boxes.py``), for the same misses.
- ``--set tie_break_by_size=true``: of separate dips tied at the lowest level (many windows at 0
  in sparse counts), judge the largest rather than the first in raster order.

Adoption rule (the one the earlier QC experiments used; written down after a first trial run of
``max_candidates`` on the evaluation fields, so it is not blind to that run, and applied unchanged
to the later trials): ship the setting only if, on the EVALUATION fields of bench/qc_fields.py,
detected-of-detectable rises for blank or dimmed areas and falls for no class, and neither the
clean-field false flags (EVALUATION and CALIBRATION fields) nor the false flags on other markers of
any class rise. Both settings run here, in one run, through bench/bench_qc.py's matrix (the two in
parallel processes: nothing here is timed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_results  # noqa: E402

import torch  # noqa: E402

import bench_qc  # noqa: E402
import qc_fields  # noqa: E402
from qc_sabotage import CLASSES  # noqa: E402
from napari_virtual_stain.tasks.qc_checks import check_stack  # noqa: E402
from napari_virtual_stain.tasks.qc_settings import DEFAULTS  # noqa: E402


def matrix(settings):
    """Detected of detectable and other-marker flags per class, and the clean false flags, on the evaluation fields."""
    torch.set_num_threads(1)
    rows, clean, other, _, _ = bench_qc.run(qc_fields.EVALUATION, settings=settings)
    return {"rows": {k: (rows[k]["hit_detectable"], rows[k]["detectable"], other.get(k, 0)) for k in CLASSES},
            "clean": (len(clean["false"]), clean["judged"], clean["false"])}


def clean_flags(fields, settings):
    """``(findings, judged markers)`` of the clean stacks of ``fields``."""
    found, judged = [], 0
    for name in fields:
        stack, names = qc_fields.load_field(name)
        res = check_stack(stack, names, settings)
        judged += sum(r.assessable for r in res.values())
        found += [f"{name}:{m}:{f.kind}" for m, r in res.items() for f in r.findings]
    return found, judged


def setting(text):
    key, _, value = text.partition("=")
    if key not in DEFAULTS or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY one of the QC settings")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be JSON (a number, true or false)") from None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", dest="settings", type=setting, action="append", required=True,
                        help="a QC setting of the trial, KEY=VALUE (JSON value); repeatable")
    args = parser.parse_args()
    trial = dict(args.settings)
    torch.set_num_threads(1)
    start = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        old, new = pool.map(matrix, [{}, trial])
    cal = {"old": clean_flags(qc_fields.CALIBRATION, {}), "new": clean_flags(qc_fields.CALIBRATION, trial)}
    gain = any(new["rows"][k][0] > old["rows"][k][0] for k in ("blank_region", "dim_region"))
    loss = any(new["rows"][k][0] < old["rows"][k][0] for k in CLASSES)
    more_false = (new["clean"][0] > old["clean"][0] or len(cal["new"][0]) > len(cal["old"][0])
                  or any(new["rows"][k][2] > old["rows"][k][2] for k in CLASSES))
    adopt = gain and not loss and not more_false
    label = ", ".join(f"{k}={json.dumps(v)}" for k, v in trial.items())
    command = " ".join(f"--set {k}={json.dumps(v)}" for k, v in trial.items())
    lines = [f"Machine: {machine()}.",
             f"Command: `python bench/qc_trial.py {command}` ({time.perf_counter() - start:.0f} s in all). Fields: "
             "bench/qc_fields.py EVALUATION (matrix) and CALIBRATION (clean false flags). Rule (docstring): detection "
             "of blank or dimmed areas up, no class down, no false-flag count up.", "",
             f"| class | detected of detectable, shipped | with {label} | false flags on other markers, shipped "
             f"| with {label} |", "|---|---|---|---|---|"]
    for k in CLASSES:
        (h0, d0, f0), (h1, d1, f1) = old["rows"][k], new["rows"][k]
        lines.append(f"| {k} | {h0}/{d0} | {h1}/{d1} | {f0} | {f1} |")
    lines.append(f"| clean evaluation fields | | | {old['clean'][0]} of {old['clean'][1]} | "
                 f"{new['clean'][0]} of {new['clean'][1]} |")
    lines.append(f"| clean calibration fields | | | {len(cal['old'][0])} of {cal['old'][1]} | "
                 f"{len(cal['new'][0])} of {cal['new'][1]} |")
    lines += ["", f"Verdict: {'adopt' if adopt else 'not adopted'} (detection gain {gain}, loss {loss}, "
              f"more false flags {more_false}). New clean false flags: evaluation "
              f"{sorted(set(new['clean'][2]) - set(old['clean'][2])) or 'none'}, calibration "
              f"{sorted(set(cal['new'][0]) - set(cal['old'][0])) or 'none'}."]
    text = "\n".join(lines)
    print(text)
    update_results(f"Stain QC trial: {label} (experiment, qc_trial.py)", text)


if __name__ == "__main__":
    main()
