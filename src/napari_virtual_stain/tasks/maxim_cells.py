"""Cell-level evaluation of an imputed marker (paper 003, Fig. 2A-C).

Given a label image of nuclei (optionally grown into whole cells, as HALO does in the
paper), the mean marker intensity of every cell is measured in the acquired and in the
imputed channel (both in the comparison unit of ``tasks.maxim``). Reported:

- the cell-level MAE (mean and standard deviation of |acquired mean - imputed mean|);
- the average precision of calling cells positive from the imputed marker, where the
  truth is "acquired cell mean above a threshold" (the paper's expert threshold; by
  default Otsu's threshold over the acquired cell means) and the score is the imputed
  cell mean; AP as scikit-learn defines it (sum over recall steps of precision);
- the same numbers for any baselines given (BL-Zero, BL-Mean...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy import ndimage

from ..errors import InputError


@dataclass
class CellEvaluation:
    n_cells: int
    labels: np.ndarray  # (N,) label ids
    acquired: np.ndarray  # (N,) mean acquired marker per cell
    imputed: np.ndarray  # (N,) mean imputed marker per cell
    mae: float
    mae_std: float
    threshold: float
    n_positive: int
    average_precision: float  # nan when all cells or no cell are positive
    precision: np.ndarray
    recall: np.ndarray
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    marker: str = ""  # the imputed marker, as its imputer names it (set by score_imputer_on_cells)

    def summary(self) -> dict[str, float]:
        return {"cells": self.n_cells, "positive": self.n_positive, "threshold": self.threshold,
                "mae": self.mae, "mae_std": self.mae_std, "average_precision": self.average_precision,
                **{f"{name}_{k}": v for name, scores in self.baselines.items() for k, v in scores.items()}}


def precision_recall(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall at every distinct score threshold (descending), and the AP.

    AP = sum_n (R_n - R_{n-1}) P_n, as ``sklearn.metrics.average_precision_score``.
    """
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == truth.size:
        return np.array([]), np.array([]), float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    # one point per distinct score: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp = np.cumsum(truth)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return precision, recall, ap


def otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.ptp(values) == 0:
        return float(values.max()) if values.size else float("nan")
    return float(threshold_otsu(values))


def cell_means(image: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.asarray(ndimage.mean(np.asarray(image, dtype=np.float64), labels, ids), dtype=np.float64)


def evaluate_cells(acquired: np.ndarray, imputed: np.ndarray, labels: np.ndarray, *,
                   threshold: float | None = None, expand_px: int = 0,
                   baselines: Mapping[str, np.ndarray] | None = None) -> CellEvaluation:
    """Cell-level MAE and positive-cell AP of ``imputed`` against ``acquired`` (see module docstring)."""
    acquired = np.asarray(acquired)
    imputed = np.asarray(imputed)
    labels = np.asarray(labels)
    if labels.shape != acquired.shape or imputed.shape != acquired.shape:
        raise InputError(f"The label image is {'x'.join(map(str, labels.shape))} but the marker is "
                         f"{'x'.join(map(str, acquired.shape))}: they must cover the same pixels.")
    if labels.dtype.kind not in "ui" and labels.dtype != bool:
        raise InputError(f"The nuclei layer holds {labels.dtype} values; a label image (integers, 0 = background) is needed.")
    labels = labels.astype(np.int64)
    if expand_px > 0:
        from skimage.segmentation import expand_labels

        labels = expand_labels(labels, distance=int(expand_px))
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        raise InputError("The nuclei layer holds no cells (all pixels are 0).")
    acq = cell_means(acquired, labels, ids)
    imp = cell_means(imputed, labels, ids)
    errors = np.abs(acq - imp)
    threshold = otsu(acq) if threshold is None else float(threshold)
    truth = acq > threshold
    precision, recall, ap = precision_recall(truth, imp)
    scores = {}
    for name, image in (baselines or {}).items():
        means = cell_means(image, labels, ids)
        _, _, base_ap = precision_recall(truth, means)
        scores[name] = {"mae": float(np.abs(acq - means).mean()), "average_precision": base_ap}
    return CellEvaluation(int(ids.size), ids, acq, imp, float(errors.mean()), float(errors.std()), threshold,
                          int(truth.sum()), ap, precision, recall, scores)


def score_imputer_on_cells(model, card, stack, names, labels: np.ndarray, *, expand_px: int = 0,
                           threshold: float | None = None, device: str = "auto", progress=None,
                           cancel=None) -> CellEvaluation:
    """Impute ``card``'s marker over the whole stack and score it per cell against the acquired
    one, next to paper 003's baselines (BL-Mean, BL-Zero): the dock and ``virtual-stain
    cell-scores`` both come here."""
    from .maxim import bl_mean, channel_index, imputer_target, impute_marker, normalise_marker

    labels = np.asarray(labels)
    if labels.shape != tuple(stack.shape[1:]):
        raise InputError(f"The nuclei labels are {'x'.join(map(str, labels.shape))} but the markers are "
                         f"{'x'.join(map(str, stack.shape[1:]))}: they must cover the same pixels.")
    imputed = impute_marker(model, card, stack, names, device=device, progress=progress, cancel=cancel).data
    acquired = normalise_marker(stack[channel_index(names, imputer_target(card))])
    baselines = {"BL-Mean": bl_mean(stack, names, card), "BL-Zero": np.zeros_like(acquired)}
    result = evaluate_cells(acquired, imputed, labels, expand_px=expand_px, threshold=threshold, baselines=baselines)
    result.marker = imputer_target(card)
    return result
