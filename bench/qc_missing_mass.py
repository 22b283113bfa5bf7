"""Experiment: does the *mass* missing from a low area tell a failed stain from a natural gap?

    python bench/qc_missing_mass.py

The idea (proposed in the session-15 note as a count-based test): a blanked or dimmed area
of a marker lacks many of the counts its partner markers predict there, a natural gap lacks
few. Per judged marker, every connected dip of the area check's windows (``tasks/qc_regions``:
observed / expected below ``blank_level`` or ``dim_level``) is measured by the share of the
marker's whole predicted signal it lacks, (expected - observed) / expected over the field.
Clean markers (those the partners predict, held-out correlation >= ``min_predictability``) give
the natural dips; the blank and dim sabotages of bench/qc_sabotage.py (bench_qc's targets and
seeds) give the failed ones (the dip overlapping the sabotaged box with the largest share).

The test could only be adopted if the failed dips lacked more than the natural ones: the
script prints both distributions per field set and how many sabotages lie above the largest
clean share (what a threshold calibrated on clean fields would catch).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_results  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import qc_fields  # noqa: E402
from bench_qc import overlaps  # noqa: E402
from calibrate_qc import targets  # noqa: E402
from qc_sabotage import sabotage  # noqa: E402
from napari_virtual_stain.tasks import qc_regions  # noqa: E402
from napari_virtual_stain.tasks.qc_checks import check_stack, is_marker, signal_of, thresholds  # noqa: E402

LEVELS = {"blank_region": "blank_level", "dim_region": "dim_level"}


def dips(stack, names, marker, t):
    """Per kind, ``[(missing share, box)]`` of every dip of ``marker``, and its predictability."""
    block, size = int(t["block_px"]), int(t["window_blocks"])
    signals = [signal_of(ch, t["background_percentile"])[0] for ch in stack]
    informative = [i for i, n in enumerate(names) if is_marker(n) and (signals[i] > 0).sum() >= t["min_signal_px"]]
    i = names.index(marker)
    target, _, predicted, predictability, _, ratio, judged = qc_regions.window_levels(
        signals[i], [signals[j] for j in informative if j != i], t)
    out = {}
    for kind, level in LEVELS.items():
        labels, n = ndimage.label(judged & (ratio <= t[level]))
        out[kind] = []
        for c in range(1, n + 1):
            covered = qc_regions._blocks_under(labels == c, size, target.shape)
            lacking = float(predicted[covered].sum() - target[covered].sum()) / max(float(predicted.sum()), 1e-9)
            out[kind].append((lacking, qc_regions._box_of(covered, block, signals[i].shape)))
    return out, predictability


def measure(fields, t):
    clean = {k: [] for k in LEVELS}
    failed = {k: [] for k in LEVELS}
    for name in fields:
        stack, names = qc_fields.load_field(name)
        res = check_stack(stack, names)
        for m, r in res.items():
            if r.assessable and "structure" in r.measures:
                found, predictability = dips(stack, names, m, t)
                if predictability >= t["min_predictability"]:
                    for k in LEVELS:
                        clean[k] += [(share, f"{name}:{m}") for share, _ in found[k]]
        for seed, m in enumerate(targets(res)):
            for k in LEVELS:
                bad, box = sabotage(stack, names, m, k, seed=seed)
                found, _ = dips(bad, names, m, t)
                shares = [share for share, b in found[k] if overlaps(b, box)]
                failed[k].append((max(shares, default=0.0), f"{name}:{m}"))
    return clean, failed


def main():
    t = thresholds()
    lines = [f"Machine: {machine()}.", "Command: `python bench/qc_missing_mass.py`. Share: (expected - observed) / "
             "expected over the field, of one dip (docstring). Clean: dips of markers the partners predict.", "",
             "| fields | class | clean dips | largest clean shares | sabotages | sabotage share median | sabotages "
             "above the largest clean share |", "|---|---|---|---|---|---|---|"]
    for label, fields in (("calibration", qc_fields.CALIBRATION), ("evaluation", qc_fields.EVALUATION)):
        clean, failed = measure(fields, t)
        for k in LEVELS:
            top = sorted(clean[k], reverse=True)[:3]
            ceiling = top[0][0] if top else 0.0
            shares = [s for s, _ in failed[k]]
            lines.append(f"| {label} | {k} | {len(clean[k])} | "
                         f"{', '.join(f'{s:.2f} ({who})' for s, who in top)} | {len(shares)} | "
                         f"{np.median(shares):.2f} | {sum(s > ceiling for s in shares)} |")
    text = "\n".join(lines)
    print(text)
    update_results("Stain QC: missing mass of a dip (experiment, qc_missing_mass.py)", text)


if __name__ == "__main__":
    main()
