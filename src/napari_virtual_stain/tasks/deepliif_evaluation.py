"""Score DeepLIIF methods on real images with one scorer: networks and the classical baseline alike.

A *method* turns an IHC image (Y, X, 3) uint8 into DeepLIIF's fused segmentation and marker
renderings; the cells are then found by the same rules (:mod:`.deepliif_cells`), at
deepliif 1.2.7's default thresholds unless a row names its own (a model's calibrated ones,
:mod:`.deepliif_calibration`), drawn as deepliif's SegRefined, and compared with a
classified ground-truth mask by :func:`seg_metrics.classified_mask_scores` (Dice, AJI,
percent positive).

A held-out *region* (rows ``start:stop``) is scored on a prediction made on the whole image,
so the network sees the same context a user's tile would, but never a ground-truth pixel of
that region in training.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..seg_metrics import classified_mask_scores
from .deepliif_cells import Thresholds, analyse_cells
from .deepliif_dab_vote import DAB, card_positive_from, check_positive_from, redraw_whole
from .deepliif_render import render_refined

Method = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # IHC -> (segmentation RGB, marker RGB)
CLASSICAL = "classical (rgb2hed + Li threshold + watershed)"
SUMMARY = ("dice", "aji", "percent_positive_diff")


def refined_mask(segmentation: np.ndarray, marker: np.ndarray, thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """The SegRefined image (classified cells) of a segmentation map under deepliif's cell rules."""
    analysis = analyse_cells(segmentation, marker, segmentation_threshold=thresholds.segmentation,
                             split=thresholds.split, grow=thresholds.grow)
    return render_refined(analysis, analysis.classify(thresholds))


def network_method(predictor, positive_from: str | None = None) -> Method:
    """A method from a Predictor holding a DeepLIIF model (ours, official or bioimage.io); its cells'
    positive/negative as the card asks (:mod:`.deepliif_dab_vote`), or as ``positive_from`` says."""
    from .deepliif import split_outputs

    chosen = check_positive_from(positive_from) if positive_from else card_positive_from(predictor.card)

    def run(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = split_outputs(predictor.predict(np.ascontiguousarray(rgb.transpose(2, 0, 1))))
        seg = redraw_whole(rgb, images["Segmentation"]) if chosen == DAB else images["Segmentation"]
        return seg, images["Marker"]

    return run


def score_method(method: Method, ihc: np.ndarray, truth: np.ndarray, rows: slice = slice(None),
                 thresholds: Thresholds = Thresholds()) -> dict:
    """Scores of one method on one image, in the rows ``rows`` (the held-out region)."""
    seg, marker = method(ihc)
    return classified_mask_scores(refined_mask(seg, marker, thresholds)[rows], np.asarray(truth)[rows])


def summarise(per_image: dict[str, dict]) -> dict[str, float]:
    """Mean Dice and AJI over images and the mean *absolute* difference in percent positive."""
    if not per_image:
        return {}
    values = list(per_image.values())
    return {"dice": round(float(np.nanmean([v["dice"] for v in values])), 4),
            "aji": round(float(np.nanmean([v["aji"] for v in values])), 4),
            "percent_positive_diff": round(float(np.mean([abs(v["percent_positive_diff"]) for v in values])), 2),
            "cells_pred": int(sum(v["cells_pred"] for v in values)),
            "cells_true": int(sum(v["cells_true"] for v in values))}


def score_table(methods: dict[str, Method], images: dict[str, tuple[np.ndarray, np.ndarray, slice]],
                thresholds: dict[str, Thresholds] | None = None) -> dict:
    """``{method: {"images": {name: scores}, "mean": summary}}`` for ``images`` = name -> (IHC, truth, rows);
    ``thresholds``: a row's own cell thresholds by its label (the others: deepliif's defaults)."""
    table = {}
    for label, method in methods.items():
        t = (thresholds or {}).get(label, Thresholds())
        per_image = {name: score_method(method, ihc, truth, rows, t) for name, (ihc, truth, rows) in images.items()}
        table[label] = {"images": per_image, "mean": summarise(per_image)}
    return table


def format_table(table: dict, title: str = "") -> str:
    """A Markdown table: method, Dice, AJI, |difference in % positive|, cells found / true."""
    lines = [title] if title else []
    lines += ["| method | Dice | AJI | abs. diff in % positive | cells (found / true) |", "|---|---|---|---|---|"]
    for label, entry in table.items():
        m = entry["mean"]
        lines.append(f"| {label} | {m['dice']:.3f} | {m['aji']:.3f} | {m['percent_positive_diff']:.1f} | "
                     f"{m['cells_pred']} / {m['cells_true']} |")
    return "\n".join(lines)
