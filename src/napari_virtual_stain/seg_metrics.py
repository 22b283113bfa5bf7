"""Segmentation metrics for classified cell masks (paper 001's evaluation): pixel accuracy,
Dice, IoU, AJI and the difference in percent positive.

Definitions (as in DeepLIIF's evaluation):

- *pixel accuracy*, *Dice* and *IoU* compare the foreground (cell) pixels of the two masks:
  accuracy = (TP + TN) / all pixels, Dice = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN);
- *AJI* (aggregated Jaccard index, Kumar et al. 2017) compares instances: every
  ground-truth cell is matched with the predicted cell of highest IoU; AJI = sum of the
  matched intersections / (sum of the matched unions + the areas of unmatched predicted
  cells);
- *percent positive* = 100 x positive cells / all cells; we report the absolute
  difference predicted - ground truth in percentage points.

A classified mask is an RGB image in DeepLIIF's colours: red = positive cell, blue =
negative cell, green = cell boundary, black = background. Its instances are the
4-connected red or blue regions (boundaries split touching cells); an instance's class is
its majority colour; boundary pixels count as foreground.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError


def parse_classified_mask(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(foreground bool, instance labels int32, class per instance: 1 positive / 0 negative)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise InputError(f"A classified mask must be an RGB image (Y, X, 3), not shape {rgb.shape}.")
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    positive = (r > 127) & (r >= b) & (g <= 127)
    negative = (b > 127) & (b > r) & (g <= 127)
    boundary = g > 127
    labels, n = ndimage.label(positive | negative)
    pos_votes = np.bincount(labels.ravel(), weights=positive.ravel(), minlength=n + 1)[1:]
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    classes = (pos_votes * 2 >= areas).astype(np.uint8)
    return positive | negative | boundary, labels.astype(np.int32), classes


def pixel_scores(pred_fg: np.ndarray, true_fg: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, Dice and IoU of two foreground masks (nan where undefined)."""
    pred_fg, true_fg = np.asarray(pred_fg, bool), np.asarray(true_fg, bool)
    if pred_fg.shape != true_fg.shape:
        raise InputError(f"The masks differ in size: {pred_fg.shape[:2]} and {true_fg.shape[:2]}.")
    tp = float(np.count_nonzero(pred_fg & true_fg))
    fp = float(np.count_nonzero(pred_fg & ~true_fg))
    fn = float(np.count_nonzero(~pred_fg & true_fg))
    total = float(pred_fg.size)
    union = tp + fp + fn
    return {"pixel_accuracy": (total - fp - fn) / total if total else float("nan"),
            "dice": 2 * tp / (2 * tp + fp + fn) if union else float("nan"),
            "iou": tp / union if union else float("nan")}


def aji(pred_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Aggregated Jaccard index of two instance label images (0 = background)."""
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    n_pred, n_true = int(pred_labels.max(initial=0)), int(true_labels.max(initial=0))
    if n_true == 0:
        return float("nan") if n_pred == 0 else 0.0
    pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    true_area = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    both = (pred_labels > 0) & (true_labels > 0)
    pairs = true_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    keys, inter = np.unique(pairs, return_counts=True)
    t_ids, p_ids = keys // (n_pred + 1), keys % (n_pred + 1)
    union = true_area[t_ids] + pred_area[p_ids] - inter
    iou = inter / union
    intersection_sum, union_sum = 0.0, 0.0
    used = np.zeros(n_pred + 1, dtype=bool)
    best = {}
    for t, p, i, u, j in zip(t_ids, p_ids, inter, union, iou):
        if t not in best or j > best[t][3]:
            best[t] = (p, i, u, j)
    for t in range(1, n_true + 1):
        if t in best:
            p, i, u, _ = best[t]
            intersection_sum += i
            union_sum += u
            used[p] = True
        else:
            union_sum += true_area[t]
    union_sum += float(pred_area[1:][~used[1:]].sum())
    return float(intersection_sum / union_sum) if union_sum else float("nan")


def percent_positive(classes: np.ndarray) -> float:
    classes = np.asarray(classes)
    return 100.0 * float(np.count_nonzero(classes == 1)) / classes.size if classes.size else 0.0


def classified_mask_scores(pred_rgb: np.ndarray, true_rgb: np.ndarray) -> dict[str, float]:
    """All of the paper's metrics for a predicted vs a ground-truth classified mask (RGB)."""
    pred_fg, pred_labels, pred_classes = parse_classified_mask(pred_rgb)
    true_fg, true_labels, true_classes = parse_classified_mask(true_rgb)
    scores = pixel_scores(pred_fg, true_fg)
    scores["aji"] = aji(pred_labels, true_labels)
    scores["percent_positive_pred"] = percent_positive(pred_classes)
    scores["percent_positive_true"] = percent_positive(true_classes)
    scores["percent_positive_diff"] = scores["percent_positive_pred"] - scores["percent_positive_true"]
    scores["cells_pred"] = int(pred_classes.size)
    scores["cells_true"] = int(true_classes.size)
    return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in scores.items()}
