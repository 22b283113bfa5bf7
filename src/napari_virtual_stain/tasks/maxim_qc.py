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

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import check_cancel
from .maxim import (bl_mean, channel_index, check_marker_stack, check_model_fits, impute_marker, imputer_predictor,
                    normalise_marker, stats_from_cards)
from .maxim_brightness import brightness_ratios, relative_brightness, relative_to_others
from .maxim_disagreement import Box, align_to, disagreement_regions, local_error_level
from .maxim_qc_settings import QCSettings
from .maxim_verdict import MarkerQC, _expected, _scores, judge_marker
from .qc_report import QCReport, _json_floats
from .region import Region

# The check's parts live in maxim_qc_settings, maxim_brightness, maxim_disagreement and
# maxim_verdict; every name is importable from here as it always was.
__all__ = ["Box", "MarkerQC", "QCReport", "QCSettings", "align_to", "brightness_ratios", "disagreement_regions",
           "judge_marker", "local_error_level", "relative_brightness", "relative_to_others", "run_qc", "_expected",
           "_json_floats", "_scores"]


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
    predictors = {m: imputer_predictor(model, card, device) for m, (model, card) in checked.items()}
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
