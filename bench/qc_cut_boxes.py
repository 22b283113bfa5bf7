"""How low clean markers' cut-bounded rectangles are, against blanked and dimmed ones (step 7 of
tasks/qc_regions.py).

    python bench/qc_cut_boxes.py [--fields calibration|evaluation|all]

Step 7 flags a rectangle bounded by straight cuts on ``min_cut_sides`` sides (tasks/qc_cut_boxes.py)
when its signal is under ``blank_level`` of its partners' prediction. Per field set this prints,
for every judged marker of the clean stacks, the lowest level (observed / expected inside) of its
rectangles with that many sides, and the same for the sabotaged marker's rectangles that overlap
its blanked or dimmed box (bench/qc_sabotage.py, detectable sabotages only). The rule is safe for a
class where every clean level lies above the limit that class would need. Written to RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_results  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import qc_fields  # noqa: E402
from bench_qc import detectable, overlaps  # noqa: E402
from calibrate_qc import targets  # noqa: E402
from qc_sabotage import sabotage  # noqa: E402
from napari_virtual_stain.tasks.qc_checks import check_stack, is_marker, signal_of, thresholds  # noqa: E402
from napari_virtual_stain.tasks.qc_regions import cut_box_sums, window_levels  # noqa: E402


def rectangle_levels(stack, names, marker, t):
    """``[(level, box)]`` of ``marker``'s rectangles with at least ``min_cut_sides`` cut sides, as step 7 reads them."""
    signals = [signal_of(c, t["background_percentile"])[0] for c in np.asarray(stack)]
    informative = [i for i, n in enumerate(names) if is_marker(n) and int((signals[i] > 0).sum()) >= t["min_signal_px"]]
    i = names.index(marker)
    others = [signals[j] for j in informative if j != i]
    if i not in informative or not others:
        return []
    target, blocks, _, _, used, _, _ = window_levels(signals[i], others, t)
    if not used:
        return []
    return [(o / max(e, 1e-9), found["box"]) for o, e, found in cut_box_sums(target, blocks, others, used, signals[i], t)]


def run(fields, t):
    clean, sabotaged = [], {"blank_region": [], "dim_region": []}
    for name in fields:
        stack, names = qc_fields.load_field(name)
        res = check_stack(stack, names)
        for m, r in res.items():
            levels = rectangle_levels(stack, names, m, t) if r.assessable else []
            if levels:
                clean.append((min(v for v, _ in levels), f"{name}:{m}"))
        for k, marker in enumerate(targets(res)):
            for kind in sabotaged:
                bad, box = sabotage(stack, names, marker, kind, seed=k)
                if not detectable(stack, names, res, marker, kind, box, t)[0]:
                    continue
                levels = [v for v, b in rectangle_levels(bad, names, marker, t) if overlaps(b, box)]
                sabotaged[kind].append((min(levels) if levels else None, f"{name}:{marker}"))
    return clean, sabotaged


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", default="all", choices=["calibration", "evaluation", "all"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = {"calibration": ["calibration"], "evaluation": ["evaluation"], "all": ["calibration", "evaluation"]}[args.fields]
    t = thresholds()
    start = time.perf_counter()
    lines = [f"Machine: {machine()}.", f"Command: `python bench/qc_cut_boxes.py --fields {args.fields}`.",
             f"Rectangles with at least {t['min_cut_sides']} cut sides; level: observed / expected inside "
             f"(step 7 flags under blank_level {t['blank_level']:g}).", "",
             "| fields | clean markers with such a rectangle | lowest clean levels | detectable blanked: with a "
             "rectangle / under blank_level | their median level | detectable dimmed: with a rectangle | their "
             "lowest / median level |", "|---|---|---|---|---|---|---|"]
    for which in sets:
        fields = qc_fields.CALIBRATION if which == "calibration" else qc_fields.EVALUATION
        clean, bad = run(fields, t)
        clean.sort()
        lowest = ", ".join(f"{v:.3f} ({label})" for v, label in clean[:3]) or "none"
        blank = [v for v, _ in bad["blank_region"] if v is not None]
        dim = sorted(v for v, _ in bad["dim_region"] if v is not None)
        under = sum(v < t["blank_level"] for v in blank)
        lines.append(f"| {which} | {len(clean)} | {lowest} | {len(blank)} of {len(bad['blank_region'])} / {under} "
                     f"| {np.median(blank) if blank else float('nan'):.3f} | {len(dim)} of {len(bad['dim_region'])} "
                     f"| {dim[0] if dim else float('nan'):.3f} / {np.median(dim) if dim else float('nan'):.3f} |")
        print(lines[-1], flush=True)
    lines += ["", f"({time.perf_counter() - start:.0f} s in all.) A clean rectangle under blank_level would be a false "
              "flag of step 7; a dimmed area's level among the clean ones is why step 7 flags blank areas only."]
    text = "\n".join(lines)
    print(text)
    update_results("Stain QC: levels of cut-bounded rectangles (qc_cut_boxes.py)", text)


if __name__ == "__main__":
    main()
