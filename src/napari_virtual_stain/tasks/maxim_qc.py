"""Missing-stain QC: training-free checks of every marker, plus imputation where it earns trust.

The training-free checks (``tasks.qc_checks``: blank and dimmed areas, missing, noise-only
and misregistered markers, saturation) run on every stack, with or without imputers, and
their thresholds come from clean real fields, never from the stack being judged. Each of
their findings names its class, a sentence, its evidence and, for areas, a box.

With imputers, the imputation check below adds its verdict for the markers whose imputer
is good enough on held-out data (``min_expected_pcc``; for the joint imputer of
``training.joint_imputer`` also: it beat the mean-of-other-markers baseline there, the
card's ``counts``); the others are still judged by the training-free checks. The brightness ratio against the imputers' training stack is kept
as information only: ordinary variation between two regions of a slide reaches 3x, so it
no longer flags anything.

The imputation check:

For each checked marker the report holds the paper's scores (SSIM, PCC, MAE) of the
imputation against the acquired channel, the same scores for the two baselines of paper
003 (BL-Zero: an image of zeros; BL-Mean: the mean of the input markers) and the margin
of the model over them, a map of where acquired and imputed disagree, and a verdict.

Decision rule (all intensities in the comparison unit of ``tasks.maxim``: each marker's
own 1st/99.8th percentiles -> [0, 1]). A marker is flagged when

1. **blank**: its acquired channel has no dynamic range (constant, e.g. all zeros);
2. **structure**: the correlation of acquired and imputed is below ``pcc_ratio`` times the
   correlation its imputer reached on held-out good data (``card.scores["val"]["pcc"]``;
   with inputs treated as missing, the score it reached without them, so a marker whose
   main predictor failed becomes "not assessable" instead of being blamed).
   Markers whose imputer is poor even on good data (expected PCC below
   ``min_expected_pcc``) cannot be judged this way and say so instead of being flagged;
3. **brightness**: its raw intensity range, relative to the range in the imputers'
   training stack (``card.extra["marker_stats"]``), differs by more than
   ``brightness_factor`` from that of the median marker (markers already found failed
   are left out of that median). Per-marker normalisation would
   otherwise hide a uniformly dimmed stain; comparing with the other markers keeps a
   stack that is brighter or darker as a whole from being flagged;
4. **regions**: the local absolute difference (gaussian-smoothed, ``smooth_sigma``) of the
   imputation and the acquired channel (first scaled onto the imputation by a trimmed
   least-squares fit, :func:`align_to`, so a failed area cannot shift the whole channel)
   exceeds ``region_floor``, ``region_mae_factor`` times the imputer's held-out MAE and
   ``region_local_factor`` times the 99.9th percentile of that map on good held-out data
   (what good data never shows) over a connected area of at least ``min_region_area`` pixels. Each such area is
   reported as a box, labelled "weaker" (acquired below imputed: missing or dim stain)
   or "stronger" (acquired above imputed: noise, debris, bleed-through).

A failed marker is also an input of the other markers' imputers and drags their
imputations down with it. So the QC runs in rounds: after each round the most severe
newly flagged marker is treated as missing (fed as zeros, as in training) and the
remaining markers are judged again, until no new marker is flagged. Finally each flagged
marker is judged once more with all *other* flagged markers treated as missing and is
cleared if it then passes (it had only been poisoned: the most severe marker of a round is
not always the culprit). Healthy markers therefore end up judged without the influence
of the failed ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .. import metrics
from ..engine.predictor import Predictor
from ..errors import check_cancel
from ..models.card import ModelCard
from .maxim import (bl_mean, channel_index, check_marker_stack, check_model_fits, impute_marker,
                    normalise_marker, raw_range, stats_from_cards)
from .qc_report import QCReport, _json_floats  # noqa: F401 - QCReport is part of this API
from .region import Region


@dataclass
class QCSettings:
    pcc_ratio: float = 0.6
    min_expected_pcc: float = 0.3
    brightness_factor: float = 2.0
    smooth_sigma: float = 3.0
    region_floor: float = 0.2
    region_mae_factor: float = 4.0
    # ... and this factor times the 99.9th percentile of the same smoothed map on good
    # held-out data (card.scores["val"]["local_error_p999"], stored by training).
    region_local_factor: float = 1.25
    # A failed area spans more than a few cells: one cell the imputer could not predict
    # (a Ki67-positive nucleus, say) is biology, not a failed stain.
    min_region_area: int = 256
    # Used when a card carries no held-out scores (a model trained elsewhere).
    default_expected_pcc: float = 0.8
    default_expected_mae: float = 0.05


@dataclass
class Box:
    """A flagged area in whole-image pixel coordinates (stop exclusive)."""

    y0: int
    x0: int
    y1: int
    x1: int
    area: int  # flagged pixels inside the box
    mean_difference: float  # acquired - imputed, averaged over the flagged pixels
    kind: str  # "weaker" or "stronger"


@dataclass
class MarkerQC:
    marker: str
    scores: dict[str, float]  # ssim, pcc, mae of the imputation vs acquired
    bl_zero: dict[str, float]
    bl_mean: dict[str, float]
    margin: dict[str, float]  # model better than baseline by (SSIM up, MAE down) this much
    expected: dict[str, float]  # held-out pcc / mae of the imputer on good data
    brightness: float | None  # raw range relative to training, divided by the median marker's
    flagged: bool
    reasons: list[str]
    regions: list[Box]
    treated_missing: list[str]  # input markers zeroed when this verdict was reached
    assessable: bool = True
    disagreement: np.ndarray | None = field(default=None, repr=False)  # (Y, X) smoothed |acq - imp|
    imputed: np.ndarray | None = field(default=None, repr=False)
    severity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("disagreement")
        data.pop("imputed")
        data["regions"] = [{"start": [b.y0, b.x0], "stop": [b.y1, b.x1], "class": "imputation", "kind": b.kind,
                            "area": b.area, "mean_difference": b.mean_difference} for b in self.regions]
        return _json_floats(data)


def _expected(card: ModelCard, settings: QCSettings, missing: Sequence[str] = ()) -> dict[str, float]:
    """What the imputer scores on good held-out data, with ``missing`` inputs zeroed if any.

    Training stores leave-one-input-out scores (``scores["val_without"][marker]``); with
    several inputs missing the worst of their scores is used. Without them (older cards)
    the all-inputs scores are used.
    """
    held_out = card.scores.get("val", {}) if isinstance(card.scores, dict) else {}
    without = card.scores.get("val_without", {}) if isinstance(card.scores, dict) else {}
    pcc, mae, local = held_out.get("pcc"), held_out.get("mae"), held_out.get("local_error_p999")
    known = [without[m] for m in missing if isinstance(without.get(m), dict)]
    if known:
        locals_ = [k["local_error_p999"] for k in known if k.get("local_error_p999") is not None]
        local = max(locals_) if locals_ else local
        pccs = [k.get("pcc") for k in known if k.get("pcc") is not None and math.isfinite(k["pcc"])]
        maes = [k.get("mae") for k in known if k.get("mae") is not None and math.isfinite(k["mae"])]
        pcc = min(pccs) if pccs else pcc
        mae = max(maes) if maes else mae
    out = {"pcc": float(pcc) if pcc is not None and math.isfinite(pcc) else settings.default_expected_pcc,
           "mae": float(mae) if mae is not None and math.isfinite(mae) else settings.default_expected_mae}
    if local is not None and math.isfinite(local):
        out["local_error_p999"] = float(local)
    if isinstance(card.scores, dict) and "counts" in card.scores:  # the joint imputer's held-out verdict
        out["counts"] = bool(card.scores["counts"])
        base = card.scores.get("bl_mean", {}).get("mae")
        if base is not None and math.isfinite(base):
            out["bl_mean_mae"] = float(base)
    return out


def _scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {"ssim": metrics.ssim(pred, target), "pcc": metrics.pcc(pred, target), "mae": metrics.mae(pred, target)}


def brightness_ratios(stack, names: Sequence[str], reference: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each marker's raw range (1st to 99.8th percentile) now, divided by its range in training."""
    ratios = {}
    for i, name in enumerate(names):
        ref = reference.get(name)
        if not ref:
            continue
        span_ref = float(ref["high"]) - float(ref["low"])
        if span_ref <= 0:
            continue
        low, high = raw_range(stack[i])
        ratios[name] = max(high - low, 0.0) / span_ref
    return ratios


def relative_to_others(ratios: Mapping[str, float], exclude: Sequence[str] = ()) -> dict[str, float]:
    """Each ratio divided by the median ratio of the other markers, leaving ``exclude`` out of
    the medians (markers already found failed must not move the reference of the others)."""
    out = {}
    for name, ratio in ratios.items():
        others = [r for n, r in ratios.items() if n != name and n not in exclude]
        median = float(np.median(others)) if others else 0.0
        if median > 0:
            out[name] = ratio / median
    return out


def relative_brightness(stack, names: Sequence[str], reference: Mapping[str, Mapping[str, float]],
                        exclude: Sequence[str] = ()) -> dict[str, float]:
    """Each marker's raw range now / in training, divided by the median of the other markers' ratios."""
    return relative_to_others(brightness_ratios(stack, names, reference), exclude)


def align_to(acquired: np.ndarray, imputed: np.ndarray, keep: float = 0.6, iterations: int = 4) -> np.ndarray:
    """``a * acquired + b`` fitted to ``imputed`` by trimmed least squares.

    The percentile scaling of a channel moves when part of it fails (a blanked region
    drags its 1st percentile to 0 and lifts everything else), which would paint the whole
    channel as disagreeing. The fit keeps the best-agreeing ``keep`` share of pixels in
    each iteration, so failed areas (outliers) do not set the scale. A fit that would
    invert the channel (a <= 0, e.g. pure noise) leaves it as it is.
    """
    x = acquired.astype(np.float64).ravel()
    y = imputed.astype(np.float64).ravel()
    step = max(1, x.size // 250_000)
    xs, ys = x[::step], y[::step]
    finite = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[finite], ys[finite]
    a, b = 1.0, 0.0  # both are in the same [0, 1] unit already: start from the identity
    for _ in range(iterations):
        residual = np.abs(a * xs + b - ys)
        chosen = residual <= np.quantile(residual, keep) if residual.size else residual > 0
        if chosen.sum() < 3 or np.ptp(xs[chosen]) == 0:
            return acquired
        a, b = np.polyfit(xs[chosen], ys[chosen], 1)
    if not a > 0:
        return acquired
    return (a * acquired + b).astype(np.float32)


def local_error_level(acquired: np.ndarray, imputed: np.ndarray, sigma: float | None = None,
                      percentile: float = 99.9) -> float:
    """The ``percentile`` of the smoothed |acquired - imputed| map (as the QC computes it) on good data."""
    sigma = QCSettings().smooth_sigma if sigma is None else sigma
    aligned = align_to(acquired, imputed)
    smoothed = ndimage.gaussian_filter(np.abs(aligned.astype(np.float32) - imputed.astype(np.float32)), sigma)
    return float(np.percentile(smoothed, percentile))


def disagreement_regions(acquired: np.ndarray, imputed: np.ndarray, threshold: float, sigma: float,
                         min_area: int, offset: Sequence[int] = (0, 0)) -> tuple[np.ndarray, list[Box]]:
    """Smoothed |acquired - imputed| and the boxes of its connected areas above ``threshold``."""
    difference = acquired.astype(np.float32) - imputed.astype(np.float32)
    smoothed_abs = ndimage.gaussian_filter(np.abs(difference), sigma, mode="reflect")
    smoothed_signed = ndimage.gaussian_filter(difference, sigma, mode="reflect")
    labels, n = ndimage.label(smoothed_abs > threshold)
    boxes = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        inside = labels[sl] == index
        area = int(inside.sum())
        if area < min_area:
            continue
        mean_diff = float(smoothed_signed[sl][inside].mean())
        boxes.append(Box(sl[0].start + offset[0], sl[1].start + offset[1], sl[0].stop + offset[0],
                         sl[1].stop + offset[1], area, mean_diff, "weaker" if mean_diff < 0 else "stronger"))
    boxes.sort(key=lambda b: -b.area)
    return smoothed_abs.astype(np.float32), boxes


def judge_marker(marker: str, acquired_raw: np.ndarray, acquired: np.ndarray, imputed: np.ndarray,
                 mean_image: np.ndarray, expected: dict[str, float], brightness: float | None,
                 settings: QCSettings, offset: Sequence[int], treated_missing: Sequence[str]) -> MarkerQC:
    """Scores and verdict for one marker (see the module docstring for the rule)."""
    scores = _scores(imputed, acquired)
    zero = np.zeros_like(acquired)
    s_zero, s_mean = _scores(zero, acquired), _scores(mean_image, acquired)
    s_zero.pop("pcc")  # undefined for a constant image
    margin = {"ssim_vs_bl_zero": scores["ssim"] - s_zero["ssim"], "mae_vs_bl_zero": s_zero["mae"] - scores["mae"],
              "ssim_vs_bl_mean": scores["ssim"] - s_mean["ssim"], "mae_vs_bl_mean": s_mean["mae"] - scores["mae"]}
    reasons, severity = [], 0.0
    assessable = expected["pcc"] >= settings.min_expected_pcc and expected.get("counts", True)
    low, high = raw_range(acquired_raw)
    if high <= low and assessable:  # constant while an imputer that counts expects it: missing
        reasons.append(f"blank: the acquired {marker} channel is constant ({low:g})")
        severity = math.inf
    elif high <= low:
        pass  # constant, and no imputer that earns trust says it should be there: not assessable
    elif assessable:
        threshold = settings.pcc_ratio * expected["pcc"]
        pcc = scores["pcc"] if math.isfinite(scores["pcc"]) else 0.0
        if pcc < threshold:
            reasons.append(f"structure: acquired and imputed {marker} correlate at {pcc:.2f}, "
                           f"below {threshold:.2f} ({settings.pcc_ratio:g} x the {expected['pcc']:.2f} reached on good data)")
            severity = max(severity, 1.0 + (threshold - pcc) / max(threshold, 1e-6))
    threshold = max(settings.region_floor, settings.region_mae_factor * expected["mae"],
                    settings.region_local_factor * expected.get("local_error_p999", 0.0))
    disagreement, boxes = disagreement_regions(align_to(acquired, imputed), imputed, threshold, settings.smooth_sigma,
                                               settings.min_region_area, offset)
    blank = math.isinf(severity)
    if not assessable and not blank:
        boxes = []  # its imputation is too poor to say where the stain is wrong
    elif boxes and not blank:
        covered = sum(b.area for b in boxes)
        reasons.append(f"regions: {len(boxes)} area(s), {covered} pixels, where acquired and imputed {marker} "
                       f"differ by more than {threshold:.2f}")
        peak = max(float(disagreement[b.y0 - offset[0]:b.y1 - offset[0], b.x0 - offset[1]:b.x1 - offset[1]].max())
                   for b in boxes)
        severity = max(severity, peak / threshold)
    if not assessable and not reasons:
        against = (f" and MAE {expected['mae']:.3f} against {expected['bl_mean_mae']:.3f} for the mean of the other "
                   "markers" if "bl_mean_mae" in expected else "")
        reasons.append(f"not assessable: its imputer reached only PCC {expected['pcc']:.2f}{against} on held-out "
                       "good data; the training-free checks still judge it")
    flagged = any(not r.startswith("not assessable") for r in reasons)
    return MarkerQC(marker, scores, s_zero, s_mean, margin, expected, brightness, flagged, reasons,
                    boxes if flagged else [], list(treated_missing), assessable, disagreement, imputed, severity)


def run_qc(stack, names: Sequence[str], imputers: Mapping[str, tuple] | None = None, *, region: Region | None = None,
           settings: QCSettings | None = None, reference_stats: Mapping | None = None, device: str = "auto",
           progress: Callable[[int, int], None] | None = None, cancel=None, training_free: bool = True,
           thresholds: Mapping[str, Any] | None = None) -> QCReport:
    """QC every marker of a (C, Y, X) ``stack``: the training-free checks on all of them
    (``training_free``; ``thresholds`` overrides calibrated ones), and the imputation check on
    those with an imputer in ``imputers`` ({marker: (model, card)}; None or empty: none).

    ``region`` limits the QC to part of the image (the current view); boxes are always in
    whole-image pixels. ``reference_stats`` ({marker: {"low", "high"}}, raw) overrides the
    brightness reference stored in the cards.
    """
    settings = settings or QCSettings()
    names = check_marker_stack(stack, names)
    spatial = tuple(int(s) for s in stack.shape[1:])
    region = region or Region.whole(spatial)
    crop = np.asarray(stack[(slice(None),) + region.slices])
    imputers = imputers or {}
    checks = {}
    if training_free:
        from .qc_checks import check_stack, thresholds as qc_thresholds

        check_cancel(cancel)
        checks = check_stack(crop, names, thresholds)
    checked = {}
    for marker, (model, card) in imputers.items():
        check_model_fits(card, names)
        checked[names[channel_index(names, marker)]] = (model, card)
    unchecked = [n for n in names if n not in checked]
    warnings = []
    cards = {m: c for m, (_, c) in checked.items()}
    reference = dict(reference_stats) if reference_stats is not None else stats_from_cards(cards)
    if checked and not reference:
        warnings.append("the imputers carry no training brightness reference: uniformly dimmed stains cannot be detected")
    ratios = brightness_ratios(crop, names, reference)
    trained_dtype = next((c.extra.get("dtype") for c in cards.values() if c.extra.get("dtype")), None)
    if trained_dtype and trained_dtype != str(crop.dtype):
        warnings.append(f"the imputers were trained on {trained_dtype} images but this stack is {crop.dtype}")

    acquired = {m: normalise_marker(crop[channel_index(names, m)]) for m in checked}
    predictors = {m: Predictor(model, card, device=device) for m, (model, card) in checked.items()}
    imputations: dict[tuple, np.ndarray] = {}  # (marker, missing inputs) -> imputed
    suspects: list[str] = []
    verdicts: dict[str, MarkerQC] = {}
    done, total = 0, len(checked)
    rounds = 0
    for rounds in range(1, len(checked) + 2):  # at most one new suspect per round
        brightness = relative_to_others(ratios, exclude=suspects)
        for marker, (model, card) in checked.items():
            if marker in suspects:
                continue
            check_cancel(cancel)
            missing = [s for s in suspects if s in card.input_channels]
            previous = verdicts.get(marker)
            if (previous is not None and previous.treated_missing == missing
                    and previous.brightness == brightness.get(marker)):
                continue  # nothing it depends on changed since its last verdict
            key = (marker, tuple(missing))
            if key not in imputations:
                imputations[key] = impute_marker(model, card, crop, names, missing=missing,
                                                 predictor=predictors[marker], cancel=cancel).data
                done += 1
                if progress is not None:
                    progress(done, max(total, done))
            verdicts[marker] = judge_marker(
                marker, crop[channel_index(names, marker)], acquired[marker], imputations[key],
                bl_mean(crop, names, card, missing=missing), _expected(card, settings, missing),
                brightness.get(marker), settings, region.start, missing)
        new = [m for m, q in verdicts.items() if q.flagged and m not in suspects]
        if not new:
            break
        suspects.append(max(new, key=lambda m: verdicts[m].severity))
        # Markers that depend on the new suspect will be imputed again.
        total += sum(1 for m, (_, c) in checked.items() if m not in suspects and suspects[-1] in c.input_channels)
    # A marker flagged only because a failed marker poisoned its imputation is cleared:
    # judged again with every *other* flagged marker treated as missing, it must still fail.
    changed = True
    while changed and len(suspects) > 1:
        changed = False
        for marker in list(suspects):
            others = [s for s in suspects if s != marker]
            model, card = checked[marker]
            missing = [s for s in others if s in card.input_channels]
            if verdicts[marker].treated_missing == missing:
                continue
            check_cancel(cancel)
            key = (marker, tuple(missing))
            if key not in imputations:
                imputations[key] = impute_marker(model, card, crop, names, missing=missing,
                                                 predictor=predictors[marker], cancel=cancel).data
            verdict = judge_marker(
                marker, crop[channel_index(names, marker)], acquired[marker], imputations[key],
                bl_mean(crop, names, card, missing=missing), _expected(card, settings, missing),
                relative_to_others(ratios, exclude=others).get(marker), settings, region.start, missing)
            if not verdict.flagged:
                verdicts[marker] = verdict
                suspects.remove(marker)
                changed = True
    ordered = {m: verdicts[m] for m in names if m in verdicts}
    report = QCReport(ordered, unchecked if checked else [], region, settings, rounds, warnings, checks, list(names))
    if training_free:
        report.thresholds = qc_thresholds(thresholds)
    return report
