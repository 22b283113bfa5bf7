"""Blank and dimmed areas of one marker: its signal per block against what the other markers predict there.

A marker that is naturally absent from a compartment (keratin in stroma, CD8 outside T-cell
areas) cannot be called blank there from its own level alone, and the tissue (sum of all
other markers) does not say which compartment an area is. What does say it is the markers
that go with it: keratin goes with E-cadherin, CD8 with CD3. So per marker:

1. the field is cut into blocks (``block_px``) and each informative marker's signal (above
   its background) is summed per block;
2. the marker's block sums are predicted from the ``partners`` other markers whose block
   sums correlate best with it, by a non-negative least-squares fit (a marker absent from
   an area is predicted absent there when its partners are), robust to a failed area
   (the blocks that fit worst are left out of the fit, ``trim``) and held out by space:
   the blocks of one half of a checkerboard of ``fold_blocks``-wide cells are predicted
   from a fit on the other half, so no block predicts itself;
3. a marker whose held-out prediction correlates with it below ``min_predictability``
   (over all blocks, or over the blocks outside the candidate area of step 4 where that is
   most of the field, so that a failed area does not make its own marker look
   unpredictable) cannot be judged for areas
   (its partners do not tell where it belongs) and says so;
4. every window of ``window_blocks`` x ``window_blocks`` blocks with an expected signal of
   at least ``min_expected_counts`` (and at least ``min_expected_share`` of the marker's
   typical window) gets observed / expected. The lowest window and the windows around it
   that stay within twice its level are the candidate area (with ``max_candidates`` > 0 the
   next-lowest separate dips below ``dim_level`` are candidates too, each judged by steps 5-6);
5. the candidate is flagged when it is below ``dim_level`` (``blank_level``: blank) *and*
   the marker never falls that low elsewhere: the lowest window sharing no block with the
   area is at least ``min_rest_dim`` (``min_rest_blank``) of its expected level and the
   area at most ``max_contrast`` of that. This is the marker judged against its own
   expression across the tissue: a marker with natural gaps (a HER2-negative duct, a
   region without T cells) shows them in more than one place and is left alone. An area
   over more than ``max_area_share`` of the field is not claimed: there the marker is
   absent from most of the tissue, which its biology explains as well as a failure;
6. a candidate below ``dim_level`` is also flagged, however unsteady the marker is elsewhere
   and even where its partners do not predict it, when the area ends in straight cuts across
   the tissue on at least ``min_cut_sides`` sides, or on every side that is not on the image
   border (at least two: a failed quadrant) (``tasks.qc_edges``): a failed tile or stripe does,
   a natural gap follows the tissue's curved boundaries and does not. The edges are read
   against the partners' prediction pixel by pixel: a line where the partners stop too is a
   tissue boundary, not a cut;
7. where steps 4-6 flag nothing (the failed area is not the lowest dip, or merges with a natural
   gap next to it, so its edges were read on the wrong box), a rectangle anywhere in the field
   bounded by straight cuts on ``min_cut_sides`` sides (``tasks.qc_cut_boxes``) is flagged blank
   when it keeps under ``blank_level`` of its partners' prediction (``box_search``, off: see
   bench/qc_trial.py).

Thresholds come from ``qc_thresholds.json`` (calibrated on clean real fields, never on the
stack being judged); the fit and the window statistics are of the stack itself.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

from .qc_cut_boxes import BOX_DEFAULTS, cut_boxes
from .qc_edges import EDGE_DEFAULTS, cut_enough, cut_sides

REGION_DEFAULTS: dict[str, float] = {
    "block_px": 16,
    "window_blocks": 6,  # 96 x 96 px windows: many cells
    "partners": 6,
    "trim": 0.2,
    "fold_blocks": 4,
    "min_predictability": 0.5,
    "min_expected_counts": 40.0,
    "min_expected_share": 0.25,
    "dim_level": 0.29,
    "blank_level": 0.1,
    "max_area_share": 0.5,  # an area is the smaller part of the field: the marker is judged by its level on the rest
    "max_contrast": 0.45,  # the area's lowest window is at most this share of the lowest level elsewhere
    "min_rest_blank": 0.58,  # a blank area: elsewhere the marker never falls below this share of its expected level
    "min_rest_dim": 0.72,  # ... a dimmed area (a milder dip needs a steadier marker around it)
    "min_cut_sides": 3,  # ... or: the area ends in straight cuts on this many sides (tasks/qc_edges.py)
    # separate dips judged after the lowest, so that a natural gap as low elsewhere cannot hide a failed
    # area; tried at 2 (bench/qc_trial.py): one dimmed area more found, one false flag more: off
    "max_candidates": 0,
    # among separate dips tied at the lowest level, judge the largest (not the first in raster order);
    # tried on (bench/qc_trial.py): nothing more found, one false flag more: off
    "tie_break_by_size": False,
    # step 7; tried on (bench/qc_trial.py): one blanked area more found, one false flag more: off
    "box_search": False,
    **EDGE_DEFAULTS,
    **BOX_DEFAULTS,
}


def block_sums(image: np.ndarray, block: int) -> np.ndarray:
    """Sums of ``image`` over ``block`` x ``block`` tiles (edge tiles partial)."""
    h, w = image.shape
    rows = np.add.reduceat(image.astype(np.float64), np.arange(0, h, block), axis=0)
    return np.add.reduceat(rows, np.arange(0, w, block), axis=1)


def _fit(y: np.ndarray, X: np.ndarray, trim: float, iterations: int = 3) -> np.ndarray:
    """Non-negative weights of ``X`` (blocks, features) for ``y``, leaving the worst-fitting blocks out."""
    keep = np.ones(y.size, bool)
    w = np.zeros(X.shape[1])
    scale = float(np.mean(y)) + 1e-9
    for _ in range(iterations):
        if keep.sum() < X.shape[1] + 2:
            break
        w, _ = nnls(X[keep], y[keep])
        # residuals in units that treat sparse and dense blocks alike (counts: variance ~ mean)
        residual = np.abs(y - X @ w) / np.sqrt(X @ w + scale)
        keep = residual <= np.quantile(residual, 1 - trim)
    return w


def predict_blocks(target: np.ndarray, others: np.ndarray, t: Mapping[str, Any]) -> tuple[np.ndarray, float, list[int]]:
    """Held-out prediction of ``target`` block sums (by, bx) from ``others`` (K, by, bx): the
    prediction, its correlation with the target (sqrt scale) and the partner indices used."""
    ny, nx = target.shape
    y = target.ravel()
    feats = others.reshape(len(others), -1)
    means = feats.mean(axis=1, keepdims=True)
    feats = np.divide(feats, means, out=np.zeros_like(feats), where=means > 0)
    root = np.sqrt(np.maximum(feats, 0))
    ry = np.sqrt(np.maximum(y, 0))
    corr = np.array([np.corrcoef(ry, r)[0, 1] if r.std() > 0 and ry.std() > 0 else -1.0 for r in root])
    order = [int(k) for k in np.argsort(-corr) if corr[k] > 0][: int(t["partners"])]
    if not order:
        return np.zeros_like(target), 0.0, []
    # no constant term: a constant would expect the marker everywhere, also where its partners say it is absent
    X = feats[order].T
    by, bx = np.indices((ny, nx))
    fold = ((by // int(t["fold_blocks"])) + (bx // int(t["fold_blocks"]))).ravel() % 2
    predicted = np.zeros_like(y)
    for f in (0, 1):
        w = _fit(y[fold != f], X[fold != f], float(t["trim"]))
        predicted[fold == f] = X[fold == f] @ w
    predicted = np.maximum(predicted, 0)
    rp = np.sqrt(predicted)
    predictability = float(np.corrcoef(ry, rp)[0, 1]) if rp.std() > 0 and ry.std() > 0 else 0.0
    return predicted.reshape(ny, nx), predictability, order


def window_ratios(observed: np.ndarray, expected: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed and expected sums over every ``size`` x ``size`` window of blocks (top-left indexed)."""
    size = int(min(size, observed.shape[0], observed.shape[1]))

    def sums(a):
        c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]

    return sums(observed), sums(expected)


def _blocks_under(windows: np.ndarray, size: int, shape) -> np.ndarray:
    """The blocks (a boolean map of ``shape``) under the ``size`` x ``size`` windows marked (top-left indexed)."""
    out = np.zeros(shape, bool)
    for wy, wx in zip(*np.nonzero(windows)):
        out[wy:wy + size, wx:wx + size] = True
    return out


def _box_of(covered: np.ndarray, block: int, shape) -> tuple[int, int, int, int]:
    """The pixel box (y0, x0, y1, x1) around the covered blocks."""
    ys, xs = np.nonzero(covered)
    return (int(ys.min()) * block, int(xs.min()) * block, min((int(ys.max()) + 1) * block, shape[0]),
            min((int(xs.max()) + 1) * block, shape[1]))


def _unpredictable(name, predictability, t) -> str:
    return (f"regions: the other markers do not tell where {name} belongs (held-out correlation "
            f"{predictability:.2f}, {t['min_predictability']:g} needed), so a blank or dim area cannot be told from "
            "its biology")


def _pixel_expected(target, others, other_signals, used, t) -> np.ndarray:
    """The marker as its partners predict it pixel by pixel: their signals weighted as the block fit
    weights their block sums, smoothed to a few pixels. The edges are read against it."""
    w = _fit(target.ravel(), np.stack([others[k].ravel() for k in used], axis=1), float(t["trim"]))
    pixel = sum(wk * np.asarray(other_signals[k], np.float64) for wk, k in zip(w, used))
    return ndimage.gaussian_filter(pixel, 2.0)


def window_levels(signal: np.ndarray, other_signals: Sequence[np.ndarray], t: Mapping[str, Any]):
    """Steps 1-4 for one marker: ``(target, others, predicted, predictability, used, ratio, judged)``:
    its block sums, its partners' (K, by, bx), its held-out prediction, that prediction's correlation
    with it, the partners used, observed / expected per window (inf where not judged) and the
    windows judged."""
    block, size = int(t["block_px"]), int(t["window_blocks"])
    target = block_sums(signal, block)
    others = np.stack([block_sums(s, block) for s in other_signals])
    predicted, predictability, used = predict_blocks(target, others, t)
    obs, exp = window_ratios(target, predicted, size)
    typical = float(np.median(exp[exp > 0])) if (exp > 0).any() else 0.0
    judged = (exp >= t["min_expected_counts"]) & (exp >= t["min_expected_share"] * typical)
    ratio = np.where(judged, obs / np.maximum(exp, 1e-9), np.inf)
    return target, others, predicted, predictability, used, ratio, judged


def find_low_areas(name: str, signal: np.ndarray, other_signals: Sequence[np.ndarray], other_names: Sequence[str],
                   t: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """``(areas, measures, why not judged)`` for one marker's ``signal`` (above background).

    Each area: {"kind": blank_region | dim_region, "box": (y0, x0, y1, x1), "evidence": {...}}.
    """
    block, size = int(t["block_px"]), int(t["window_blocks"])
    if min(math.ceil(n / block) for n in signal.shape) < size + 1 or not other_signals:
        return [], {}, "regions: the image is too small (or has no other marker) to judge areas"
    target, others, predicted, predictability, used, ratio, judged = window_levels(signal, other_signals, t)
    measures: dict[str, Any] = {"region_predictability": predictability,
                                "region_partners": [other_names[k] for k in used]}
    if not used:
        return [], measures, _unpredictable(name, predictability, t)
    measures["region_windows_judged"] = int(judged.sum())
    if not judged.any():
        return [], measures, f"regions: {name} is expected too sparsely anywhere to judge an area"
    # the areas judged: the lowest, and (``max_candidates``) the next-lowest separate dips below
    # ``dim_level``. A natural gap as low as a failed area elsewhere must not hide the failure.
    candidates = _candidate_areas(ratio, judged, t)
    found, first = [], None
    for rank, candidate in enumerate(candidates):
        areas, area_measures, why = _judge_area(name, candidate, ratio, judged, target, predicted, predictability,
                                                others, other_signals, other_names, used, signal, t)
        if rank == 0:
            first = (area_measures, why)
        if areas and not found:
            measures.update(area_measures)  # the measures reported are those of the first area flagged
            measures["region_candidate_rank"] = rank
        found += areas
    if found:
        return found, measures, None
    measures.update(first[0])
    if t["box_search"]:
        boxed = _cut_box_area(target, others, other_signals, other_names, used, signal, t)
        if boxed is not None:
            area, box_measures = boxed
            measures.update(box_measures)
            return [area], measures, None
    return [], measures, first[1]


def cut_box_sums(target, others, other_signals, used, signal, t) -> list[tuple[float, float, dict[str, Any]]]:
    """``[(observed, expected, rectangle)]`` of the marker's rectangles bounded by cuts on at least
    ``min_cut_sides`` sides (``tasks.qc_cut_boxes``), most sides first: the sums inside of its
    signal and of its partners' pixel prediction. Step 7 judges them; bench/qc_cut_boxes.py shows them."""
    expected = _pixel_expected(target, others, other_signals, used, t)
    out = []
    for found in cut_boxes(signal, expected, t):
        if len(found["sides"]) < t["min_cut_sides"]:
            break  # most sides first
        y0, x0, y1, x1 = found["box"]
        out.append((float(signal[y0:y1, x0:x1].sum()), float(expected[y0:y1, x0:x1].sum()), found))
    return out


def _cut_box_area(target, others, other_signals, other_names, used, signal, t):
    """Step 7: ``(area, measures)`` of a blank rectangle bounded by cuts on ``min_cut_sides`` sides, or None."""
    for o, e, found in cut_box_sums(target, others, other_signals, used, signal, t):
        y0, x0, y1, x1 = found["box"]
        # blank only: clean markers' rectangles of as many sides keep 0.18x or more of their partners'
        # prediction, dimmed ones 0.25x or more (bench/qc_cut_boxes.py), so a dimmed one is left to steps 5-6
        if (y1 - y0) * (x1 - x0) > t["max_area_share"] * signal.size or o >= t["blank_level"] * e:
            continue
        return {"kind": "blank_region", "box": found["box"], "evidence": {
            "observed": o, "expected": e, "observed_over_expected": o / max(e, 1e-9),
            "worst_window_ratio": o / max(e, 1e-9), "lowest_ratio_elsewhere": None, "limit": t["blank_level"],
            "steady_elsewhere": False, "cut_sides": found["sides"], "edge_cover": {},
            "predicted_from": [other_names[k] for k in used], "predictability": None,
            "area_px": (y1 - y0) * (x1 - x0)}}, {"region_cut_box": list(found["box"]),
                                                 "region_cut_box_sides": found["sides"]}
    return None


def _candidate_areas(ratio: np.ndarray, judged: np.ndarray, t: Mapping[str, Any]) -> list[np.ndarray]:
    """Window maps of the candidate areas, lowest first: around each dip's lowest window, the
    windows that stay within twice its level (the lowest window always; the others only if below
    ``dim_level``)."""
    out, taken = [], np.zeros(ratio.shape, bool)
    for _ in range(1 + int(t["max_candidates"])):
        left = np.where(taken, np.inf, ratio)
        worst = float(left.min())
        if not np.isfinite(worst) or (out and worst >= t["dim_level"]):
            break
        low = judged & ~taken & (ratio <= max(2 * worst, 0.02))
        labels_w, _ = ndimage.label(low)
        at = np.unravel_index(int(np.argmin(left)), ratio.shape)
        if t["tie_break_by_size"]:
            # several separate dips at the same lowest level (sparse counts: many windows at 0): the
            # largest, rather than the first in raster order
            tied = np.unique(labels_w[(left <= worst + 1e-3) & low])
            sizes = ndimage.sum_labels(low, labels_w, tied)
            candidate = labels_w == tied[int(np.argmax(sizes))]
        else:
            candidate = labels_w == labels_w[at]
        out.append(candidate)
        # the next candidate is a separate dip: not within a window's reach of this one
        taken |= ndimage.binary_dilation(candidate, iterations=int(t["window_blocks"]))
    return out


def _judge_area(name, candidate, ratio, judged, target, predicted, predictability, others, other_signals, other_names,
                used, signal, t) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """``(areas, measures, why not judged)`` for one candidate area (steps 3-6 of the module docstring)."""
    block, size = int(t["block_px"]), int(t["window_blocks"])
    worst = float(ratio[candidate].min())
    measures: dict[str, Any] = {}
    covered = _blocks_under(candidate, size, target.shape)
    # the rest: windows that share no block with the candidate area
    cov = np.pad(covered, ((1, 0), (1, 0))).cumsum(0).cumsum(1).astype(np.int64)
    touching = (cov[size:, size:] - cov[:-size, size:] - cov[size:, :-size] + cov[:-size, :-size]) > 0
    rest = judged & ~touching
    # predictability is judged outside the candidate area: a failed area of a well-predicted marker
    # must not make it look unpredictable (and so unjudgeable) by its own failure
    outside = ~covered
    ro, rp = np.sqrt(target[outside]), np.sqrt(predicted[outside])
    predictability_rest = float(np.corrcoef(ro, rp)[0, 1]) if ro.size > 2 and ro.std() > 0 and rp.std() > 0 else 0.0
    measures["region_predictability_outside"] = predictability_rest
    if covered.mean() > t["max_area_share"]:
        predictability_rest = predictability  # the outside is the smaller part: it cannot vouch for the marker
    # a marker its partners do not predict cannot be judged by its level (its gaps may be its biology);
    # only an area that ends in straight cuts is still evidence against it
    unpredictable = max(predictability, predictability_rest) < t["min_predictability"]
    why = _unpredictable(name, max(predictability, predictability_rest), t) if unpredictable else None
    rest_min = float(ratio[rest].min()) if rest.any() else math.nan
    box = _box_of(covered, block, signal.shape)
    # the edges are read around the windows nearly as low as the lowest: a dimmed area's candidate
    # also takes windows half over its edge, which would put the sides beyond reach of the cut
    tight = _blocks_under(candidate & (ratio <= max(1.25 * worst, 0.02)), size, target.shape)
    edges = None
    if worst < t["dim_level"]:
        expected = _pixel_expected(target, others, other_signals, used, t)
        edges = cut_sides(signal, _box_of(tight, block, signal.shape), t, expected)
    measures.update(region_ratio_min=worst, region_rest_min=rest_min, region_level_judged=not unpredictable,
                    region_rest_windows=int(rest.sum()), region_area_share=float(covered.mean()))
    if edges is not None:
        measures.update(region_cut_sides=len(edges["cut"]), region_edges=edges)
    if not worst < t["dim_level"] or covered.mean() > t["max_area_share"]:
        return [], measures, why  # no dip; or most of the field: where it is absent, not an area judged by the rest
    kind = "blank_region" if worst < t["blank_level"] else "dim_region"
    # a marker that falls this low elsewhere too has natural gaps: this area may be one of them ...
    steady = not unpredictable and bool(rest.any()) and worst <= t["max_contrast"] * rest_min and \
        rest_min >= (t["min_rest_blank"] if kind == "blank_region" else t["min_rest_dim"])
    # ... unless the area ends in straight cuts on more sides than any clean marker's dip does, or on
    # every side that can be seen (an area in a corner of the image, a quadrant, shows two)
    cut = cut_enough(edges, t)
    if not (steady or cut):
        return [], measures, why
    o, e = float(target[covered].sum()), float(predicted[covered].sum())
    return [{"kind": kind, "box": box, "evidence": {
        "observed": o, "expected": e, "observed_over_expected": o / max(e, 1e-9), "worst_window_ratio": worst,
        "lowest_ratio_elsewhere": rest_min, "limit": t["blank_level"] if kind == "blank_region" else t["dim_level"],
        "steady_elsewhere": steady, "cut_sides": edges["cut"], "edge_cover": edges["cover"],
        "predicted_from": [other_names[k] for k in used], "predictability": predictability,
        "area_px": int(covered.sum()) * block * block}}], measures, None
