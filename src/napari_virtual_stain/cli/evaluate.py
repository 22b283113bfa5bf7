"""``virtual-stain evaluate PRED TRUTH``: score classified cell masks the way paper 001 does.

PRED and TRUTH are classified masks in DeepLIIF's colours (red positive, blue negative,
green boundary, black background), or DeepLIIF 6-panel training images (their last panel
is the ground-truth mask). Both may be folders: every TRUTH file ``X.png`` is paired with
``X_SegRefined.png`` (what ``virtual-stain deepliif`` writes) or ``X.png`` in PRED.
Prints pixel accuracy, Dice, IoU, AJI and the percent-positive difference per image and
their mean; ``--json`` also writes them to a file.
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
    p.set_defaults(func=run)


def read_mask(path: Path) -> np.ndarray:
    """An RGB classified mask; for a 6-panel image its segmentation panel."""
    from ..io.deepliif_panels import check_rgb8, split_panels
    from ..io.tiff_reader import load_image

    data = np.asarray(load_image(path).data)
    data = check_rgb8(data, path.name)
    if data.shape[1] == 6 * data.shape[0]:
        return split_panels(data, path.name).segmentation
    return data


def pairs(prediction: Path, truth: Path) -> list[tuple[str, Path, Path]]:
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


def run(args: argparse.Namespace) -> int:
    from ..seg_metrics import classified_mask_scores

    if args.json:
        check_output_file(args.json, inputs=[args.prediction, args.truth], suffixes=JSON_OUTPUT_SUFFIXES,
                          label="scores file")
    results = {}
    for name, pred_path, true_path in pairs(Path(args.prediction), Path(args.truth)):
        pred, true = read_mask(pred_path), read_mask(true_path)
        if pred.shape != true.shape:
            raise InputError(f"{pred_path.name} is {pred.shape[1]} x {pred.shape[0]} but {true_path.name} is "
                             f"{true.shape[1]} x {true.shape[0]}: masks must have the same size.")
        results[name] = classified_mask_scores(pred, true)
    mean = {c: round(float(np.nanmean([r[c] for r in results.values()])), 4) for c in COLUMNS}
    width = max(len(n) for n in list(results) + ["mean"])
    print(f"{'image':<{width}}  " + "  ".join(f"{c:>21}" for c in COLUMNS))
    for name, r in list(results.items()) + [("mean", mean)]:
        print(f"{name:<{width}}  " + "  ".join(f"{r[c]:>21.4f}" for c in COLUMNS))
    if args.json:
        write_json_atomic(args.json, {"images": results, "mean": mean}, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
