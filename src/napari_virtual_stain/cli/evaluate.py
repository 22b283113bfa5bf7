"""``virtual-stain evaluate PRED TRUTH``: score classified cell masks the way paper 001 does.

PRED and TRUTH are classified masks in DeepLIIF's colours (red positive, blue negative,
green boundary, black background), or DeepLIIF 6-panel training images (their last panel
is the ground-truth mask). Both may be folders: every TRUTH file ``X.png`` is paired with
``X_SegRefined.png`` (what ``virtual-stain deepliif`` writes) or ``X.png`` in PRED.
Prints pixel accuracy, Dice, IoU, AJI and the percent-positive difference per image and
their mean; ``--json`` also writes them to a file.

Every score is shown next to the classical baseline (colour deconvolution, threshold,
watershed, DeepLIIF's positive rule on DAB: ``tasks.deepliif_classical``) run on the same
IHC image and scored the same way: the IHC comes from a 6-panel TRUTH, or from ``--ihc``
(an image, or a folder with ``X.png`` for every TRUTH ``X``). ``--no-baseline`` leaves it out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.outputs import JSON_OUTPUT_SUFFIXES, check_output_file, write_json_atomic

COLUMNS = ("pixel_accuracy", "dice", "iou", "aji", "percent_positive_diff")
SUFFIXES = (".png", ".tif", ".tiff")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score predicted classified cell masks against ground truth (DeepLIIF)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prediction", help="classified mask image, or a folder of them")
    p.add_argument("truth", help="ground-truth mask or 6-panel image, or a folder of them")
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")
    p.add_argument("--ihc", default=None, help="the IHC images the predictions came from (a file, or a folder), "
                                               "for the classical baseline when TRUTH holds masks only")
    p.add_argument("--no-baseline", action="store_true", help="do not score the classical baseline")
    p.set_defaults(func=run)


def _rgb(path: Path) -> np.ndarray:
    from ..io.deepliif_panels import check_rgb8
    from ..io.tiff_reader import load_image

    return check_rgb8(np.asarray(load_image(path).data), path.name)


def _is_six_panel(data: np.ndarray) -> bool:
    return data.shape[1] == 6 * data.shape[0]


def read_mask(path: Path) -> np.ndarray:
    """An RGB classified mask; for a 6-panel image its segmentation panel."""
    from ..io.deepliif_panels import split_panels

    data = _rgb(path)
    return split_panels(data, path.name).segmentation if _is_six_panel(data) else data


def read_ihc(truth_path: Path, ihc: Path | None) -> np.ndarray | None:
    """The IHC image behind a ground truth: its 6-panel's first panel, or the ``--ihc`` file; None if neither."""
    from ..io.deepliif_panels import split_panels

    data = _rgb(truth_path)
    if _is_six_panel(data):
        return split_panels(data, truth_path.name).ihc
    if ihc is None:
        return None
    if ihc.is_dir():
        matches = [ihc / f"{truth_path.stem}{s}" for s in SUFFIXES if (ihc / f"{truth_path.stem}{s}").is_file()]
        if not matches:
            raise InputError(f"There is no IHC image for {truth_path.name} in {ihc} (expected {truth_path.stem}.png).")
        ihc = matches[0]
    return _rgb(ihc)


def pairs(prediction: Path, truth: Path) -> list[tuple[str, Path, Path]]:
    for what, path in (("prediction", prediction), ("ground truth", truth)):
        if not path.exists():
            raise InputError(f"There is no {what} file or folder at {path}.")
    if truth.is_file() and prediction.is_file():
        return [(truth.stem, prediction, truth)]
    if not (truth.is_dir() and prediction.is_dir()):
        raise InputError("Give two image files, or two folders (predictions and ground truth).")
    found = []
    for t in sorted(p for p in truth.iterdir() if p.suffix.lower() in SUFFIXES):
        for candidate in (f"{t.stem}_SegRefined.png", f"{t.stem}.png", t.name):
            if (prediction / candidate).is_file():
                found.append((t.stem, prediction / candidate, t))
                break
    if not found:
        raise InputError(f"No prediction in {prediction} matches a ground-truth image in {truth} "
                         "(expected NAME_SegRefined.png or NAME.png).")
    return found


def _mean(results: dict) -> dict:
    """Each score's mean over the images where it is defined (nan where it is nowhere)."""
    means = {}
    for c in COLUMNS:
        values = [float(r[c]) for r in results.values() if np.isfinite(r[c])]
        means[c] = round(float(np.mean(values)), 4) if values else float("nan")
    return means


def _strict(scores: dict) -> dict:
    """Scores for a JSON file: an undefined score (nan) is null, as strict JSON readers expect."""
    return {k: (_strict(v) if isinstance(v, dict) else (v if not isinstance(v, float) or np.isfinite(v) else None))
            for k, v in scores.items()}


def run(args: argparse.Namespace) -> int:
    from ..seg_metrics import classified_mask_scores
    from ..tasks.deepliif_classical import classical_maps
    from ..tasks.deepliif_evaluation import refined_mask

    ihc_source = Path(args.ihc) if args.ihc else None
    if ihc_source is not None and not ihc_source.exists():
        raise InputError(f"There is no IHC image or folder at {ihc_source}.")
    if args.json:
        check_output_file(args.json, inputs=[args.prediction, args.truth], suffixes=JSON_OUTPUT_SUFFIXES,
                          label="scores file")
    results, baseline = {}, {}
    for name, pred_path, true_path in pairs(Path(args.prediction), Path(args.truth)):
        pred, true = read_mask(pred_path), read_mask(true_path)
        if pred.shape != true.shape:
            raise InputError(f"{pred_path.name} is {pred.shape[1]} x {pred.shape[0]} but {true_path.name} is "
                             f"{true.shape[1]} x {true.shape[0]}: masks must have the same size.")
        results[name] = classified_mask_scores(pred, true)
        if not np.isfinite(results[name]["dice"]):
            print(f"warning: {true_path.name}: the ground truth holds no cells, so Dice, IoU and AJI are undefined "
                  "there (nan) and left out of the mean", file=sys.stderr)
        ihc = None if args.no_baseline else read_ihc(true_path, ihc_source)
        if ihc is not None:
            if ihc.shape != true.shape:
                raise InputError(f"The IHC image for {name} is {ihc.shape[1]} x {ihc.shape[0]} but its mask is "
                                 f"{true.shape[1]} x {true.shape[0]}.")
            baseline[name] = classified_mask_scores(refined_mask(*classical_maps(ihc)), true)
    rows = [(name, "prediction", r) for name, r in results.items()] + [("mean", "prediction", _mean(results))]
    if baseline:
        rows += [(name, "classical", r) for name, r in baseline.items()] + [("mean", "classical", _mean(baseline))]
    width = max(len(n) for n in list(results) + ["mean"])
    print(f"{'image':<{width}}  {'method':<10}  " + "  ".join(f"{c:>21}" for c in COLUMNS))
    for name, method, r in rows:
        print(f"{name:<{width}}  {method:<10}  " + "  ".join(f"{r[c]:>21.4f}" for c in COLUMNS))
    if not baseline and not args.no_baseline:
        print("(no classical baseline: TRUTH holds masks only; give the IHC images with --ihc)", file=sys.stderr)
    if args.json:
        payload = {"images": results, "mean": _mean(results)}
        if baseline:
            payload["classical"] = {"images": baseline, "mean": _mean(baseline),
                                    "method": "rgb2hed + Li threshold + watershed, DeepLIIF's positive rule on DAB"}
        write_json_atomic(args.json, _strict(payload), indent=1, allow_nan=False)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
