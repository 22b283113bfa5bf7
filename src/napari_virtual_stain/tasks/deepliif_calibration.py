"""Choose a DeepLIIF model's own cell thresholds on images with ground truth (its training rows).

deepliif's defaults (segmentation 120, automatic size rule, no marker rule) were set for
deepliif's networks. Another network draws its fused segmentation with other confidences
(ours: 255 x class probability), so the cut that separates its cells best lies elsewhere.
:func:`calibrate` tries a small grid with the same cell rules and scorer every table uses
(:mod:`.deepliif_evaluation`) and keeps:

1. the segmentation threshold, the split of touching nuclei (none, or an h-maxima depth in
   px: :mod:`.deepliif_split`), the growth of the cells after it (none or 1-3 px:
   :mod:`.deepliif_grow`) and the size threshold with the best mean Dice + AJI minus the
   relative error in the number of cells found (|found - true| / true), tried together in
   that loop order. Dice + AJI alone (the sum the
   classical baseline's parameters were chosen by) rewards specks: on the bundled model's
   training rows it chose no size filter and found 278 cells where there are 191, and a
   Ki67 index is read from the count;
2. then a marker rule only if it brings the mean |difference in % positive| closer by more
   than one cell's worth (100 / true cells per image, in points): the marker rule moves
   classes only, never Dice or AJI, and a smaller gain is one or two cells of the rows.

The first best in grid order wins a tie, and deepliif's default comes first in every grid
("no split" too: a depth that cuts nothing ties with it and is not chosen).
Only call it on images the scores will not be reported on: the choice is then a part of
training, like a learning rate.

The split was added to the grid (issue 12) with this rule written down before its scores on
any real rows were computed: the split is chosen on the training rows only, by the same
objective and tie rule, for the bundled model and the classical baseline alike. The growth was
added the same way (``bench/deepliif_grow.py``, its rule written before its scores were read).
"""

from __future__ import annotations

import numpy as np

from ..seg_metrics import classified_mask_scores
from .deepliif_cells import AUTO, SEG_THRESHOLD_DEFAULT, Thresholds, analyse_cells
from .deepliif_evaluation import Method, summarise
from .deepliif_render import render_refined

SEG_GRID = (SEG_THRESHOLD_DEFAULT, *range(60, 201, 10))
SIZE_GRID = (AUTO, 0, 10, 20, 30, 40, 60, 80)
MARKER_GRID = (None, AUTO, *range(60, 250, 20))
SPLIT_GRID = (None, 1, 2, 3, 4, 6)  # px; None = deepliif's regions (no split)
GROW_GRID = (None, 1, 2, 3)  # px the cells grow after the split (tasks/deepliif_grow.py); None = as drawn


def _scores(analyses: dict, images: dict, thresholds: Thresholds) -> dict:
    per_image = {}
    for name, (analysis, truth, rows) in analyses.items():
        refined = render_refined(analysis, analysis.classify(thresholds))
        per_image[name] = classified_mask_scores(refined[rows], np.asarray(truth)[rows])
    return summarise(per_image)


def calibrate(method: Method, images: dict[str, tuple[np.ndarray, np.ndarray, slice]],
              seg_grid=SEG_GRID, size_grid=SIZE_GRID, marker_grid=MARKER_GRID, split_grid=SPLIT_GRID,
              grow_grid=GROW_GRID) -> tuple[Thresholds, dict]:
    """(the chosen thresholds, what was tried): ``images`` maps a name to (IHC, classified truth, rows scored).

    The network runs once per image; each segmentation threshold and split relabels the stored maps once.
    The report holds the chosen and the default thresholds' mean scores.
    """
    maps = {name: method(ihc) for name, (ihc, _, _) in images.items()}
    best, best_value, tried = None, -np.inf, []
    for seg in dict.fromkeys(seg_grid):  # deepliif's default first, no repeats
        for split, grow in ((a, b) for a in dict.fromkeys(split_grid) for b in dict.fromkeys(grow_grid)):
            analyses = {name: (analyse_cells(s, m, segmentation_threshold=int(seg), split=split, grow=grow),
                               images[name][1], images[name][2]) for name, (s, m) in maps.items()}
            for size in size_grid:
                t = Thresholds(int(seg), size, None, None, split, grow)
                summary = _scores(analyses, images, t)
                value = objective(summary)
                tried.append({"segmentation": int(seg), "split": split, "grow": grow, "size": size, **summary})
                if value > best_value:
                    best, best_value, best_analyses = t, value, analyses
    base = _scores(best_analyses, images, best)
    one_cell = 100.0 * len(images) / max(base["cells_true"], 1)
    marker_best, marker_value = best, base["percent_positive_diff"] - one_cell
    for marker in marker_grid:
        t = Thresholds(best.segmentation, best.size, None, marker, best.split, best.grow)
        diff = _scores(best_analyses, images, t)["percent_positive_diff"]
        if diff < marker_value:
            marker_best, marker_value = t, diff
    default = next((r for r in tried if r["segmentation"] == SEG_THRESHOLD_DEFAULT and r["size"] == AUTO
                   and r["split"] is None and r["grow"] is None), None)
    return marker_best, {"chosen": _scores(best_analyses, images, marker_best), "deepliif_defaults": default,
                         "tried": len(tried) + len(marker_grid)}


def objective(summary: dict) -> float:
    """Mean Dice + mean AJI - relative error in the number of cells (higher is better)."""
    count_error = abs(summary["cells_pred"] - summary["cells_true"]) / max(summary["cells_true"], 1)
    return summary["dice"] + summary["aji"] - count_error


def card_entry(thresholds: Thresholds, chosen_on: str, positive_from: str = "network") -> dict:
    """What a model card stores (``extra["cell_thresholds"]``, read by ``deepliif_cells.model_thresholds``
    and, for ``positive_from``, by ``deepliif_dab_vote.card_positive_from``)."""
    return {"segmentation": thresholds.segmentation, "size": thresholds.size, "size_upper": thresholds.size_upper,
            "marker": thresholds.marker, **({} if thresholds.split is None else {"split": thresholds.split}),
            **({} if thresholds.grow is None else {"grow": thresholds.grow}),
            **({} if positive_from == "network" else {"positive_from": positive_from}),
            "chosen_on": chosen_on,
            "rule": "segmentation, split of touching nuclei, growth of the cells and size: best mean Dice + AJI - relative error in the "
                    "cell count; marker rule: only if it brings % positive closer by more than one cell "
                    "(tasks/deepliif_calibration.py); positive_from: the training recipe's (--positive-from)"}
