"""Stain QC checks that need no training: each marker against itself, the tissue and a shuffled copy.

Everything here works on one (C, Y, X) stack and nothing else: no model, no reference
stack. The thresholds live in ``qc_thresholds.json`` next to this file; they were fitted on
clean real fields (``bench/calibrate_qc.py`` recomputes them and names the fields), never
on the stack being judged.

Multiplex counts are sparse (MIBI: most pixels of most channels are 0), so no check looks
at single pixels. Per marker:

- **signal**: a marker's *signal* is its raw value above its own background (1st
  percentile). Channels with almost no signal pixels cannot be judged at all and are
  reported as such (``assessable = False``), never flagged.
- **tissue**: where tissue is, for judging marker m, comes from the *other* markers (each
  scaled by its own mean, summed, smoothed), so a failed marker cannot hide its own
  failure; nuclear markers take part like any other.
- **blank / dimmed regions** (``tasks.qc_regions``): the marker's signal per block against
  what its best-correlated partner markers predict there, and against its own level
  elsewhere in the tissue: an area is flagged only where the marker is steady everywhere
  else, so a marker with natural gaps (absent from a compartment or a cell-poor area) is
  not blamed for them; or where the area ends in straight cuts across the tissue on three or
  more sides (``tasks.qc_edges``), as a failed tile does and a natural gap does not.
- **noise**: the variance of the smoothed marker divided by that of the smoothed shuffled
  marker (same values, no spatial order). Stains have spatial structure (cells), pure
  noise has a ratio of 1.
- **missing**: no structure *and* (almost) one value everywhere: only background was
  acquired. Or no signal pixels at all (too few to judge otherwise) in a stack where every
  other marker channel has them (``missing_floor_ratio`` of the emptiest other one): there
  an empty channel is not natural. Where other channels are empty too (sparse MIBI panels),
  a missing stain looks like an absent marker and is said to be not assessable. A missing
  stain over a noisy background (IF camera noise) has no structure but a spread, and is
  reported as noise: without a reference the two cannot be told apart.
- **misregistration**: cross-correlation (FFT, as phase correlation, cell-scale band-pass,
  windowed) of the marker against each of the markers with most signal; a clear peak away
  from zero with its best partner, that its second-best partner confirms, is a shifted round.
  A shift against one partner only is given to whichever of the two the other markers
  match better displaced (the shifted round, not the partner it was measured against);
  where they cannot tell (two markers that match only each other), both are flagged, each
  saying that one of the two rounds moved.
- **saturation**: a share of tissue pixels at the dtype's maximum.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .qc_findings import Finding, MarkerChecks, _area_sentence, _plain
from .qc_regions import find_low_areas
from .qc_registration import (best_shift, correlation_at, misregistration, registration_shift, registration_spectrum,
                              settle_mutual_shifts, third_party_gain)
from .qc_settings import DEFAULTS, NOT_MARKERS, THRESHOLDS_FILE, _calibrated, is_marker, thresholds
from .qc_signal import signal_of, structure_ratio, tissue_evidence

# The checks' parts live in qc_settings, qc_findings, qc_signal and qc_registration; every name
# is importable from here as it always was (the bench scripts and qc_report use this module).
__all__ = ["DEFAULTS", "NOT_MARKERS", "THRESHOLDS_FILE", "Finding", "MarkerChecks", "best_shift", "check_stack",
           "correlation_at", "is_marker", "registration_shift", "registration_spectrum", "signal_of",
           "structure_ratio", "thresholds", "third_party_gain", "tissue_evidence", "_area_sentence", "_calibrated",
           "_plain"]


def check_stack(stack, names: Sequence[str], settings: Mapping[str, Any] | None = None,
                exclude_from_tissue: Sequence[str] = (), only: Sequence[str] | None = None) -> dict[str, MarkerChecks]:
    """Run every training-free check on every marker of a (C, Y, X) ``stack`` (or on ``only`` these;
    the tissue and registration partners still come from all markers)."""
    t = thresholds(settings)
    data = np.asarray(stack)
    names = [str(n) for n in names]
    saturation_value = float(np.iinfo(data.dtype).max) if data.dtype.kind in "ui" else None
    signals, backgrounds, noises, counts = [], [], [], []
    for channel in data:
        s, bg, noise = signal_of(channel, t["background_percentile"])
        signals.append(s)
        backgrounds.append(bg)
        noises.append(noise)
        counts.append(int((s > 0).sum()))
    markers = [i for i, n in enumerate(names) if is_marker(n)]
    excluded = {e.lower() for e in exclude_from_tissue}
    informative = [i for i in markers if counts[i] >= t["min_signal_px"] and names[i].lower() not in excluded]
    scaled, total = tissue_evidence([signals[i] for i in informative], t["tissue_sigma"])
    spectra = [registration_spectrum(signals[i], t["shift_band"]) if i in informative else None
               for i in range(len(names))]
    by_signal = sorted(informative, key=lambda i: -counts[i])
    partners = by_signal[: int(t["shift_partners"])]
    out: dict[str, MarkerChecks] = {}
    wanted = None if only is None else {o.lower() for o in only}
    for i, name in enumerate(names):
        if wanted is not None and name.lower() not in wanted:
            continue
        if not is_marker(name):
            out[name] = MarkerChecks(name, False, not_assessed=["not a marker stain (elemental, background or "
                                                                 "derived channel): not judged"])
            continue
        result = MarkerChecks(name, True)
        out[name] = result
        s = signals[i]
        result.measures.update(background=backgrounds[i], background_noise=noises[i], signal_px=counts[i],
                               signal_fraction=counts[i] / s.size)
        if saturation_value is not None and data.shape[1] * data.shape[2] > 0:
            at_max = float((data[i] >= saturation_value).mean())
            result.measures["saturated_fraction"] = at_max
            if at_max >= t["saturation_fraction"]:
                result.findings.append(Finding(
                    "saturated", f"{name}: {100 * at_max:.1f}% of the pixels sit at the detector maximum "
                                 f"({saturation_value:g}): the stain is saturated there, its intensities are clipped",
                    {"saturated_fraction": at_max, "limit": t["saturation_fraction"], "value": saturation_value}))
        if counts[i] < t["min_signal_px"]:
            finding = _empty_channel(name, i, counts, markers, names, t)
            if finding is not None:
                result.findings.append(finding)
                continue
            result.assessable = False
            result.not_assessed.append(
                f"almost no signal anywhere ({counts[i]} pixels above its background of {backgrounds[i]:g}; "
                f"{t['min_signal_px']:g} needed): a marker absent from this tissue cannot be told from a failed "
                "stain without a reference (imputers)")
            continue
        k = informative.index(i) if i in informative else None
        others = len(informative) - (1 if k is not None else 0)
        if others < 1:
            result.not_assessed.append("no other marker with signal to tell where the tissue is")
            tissue_level = None
        else:
            tissue_level = (total - (scaled[k] if k is not None else 0)) / others

        structure = structure_ratio(s, t["structure_sigma"], seed=i)
        q999, q01 = np.percentile(data[i].astype(np.float32), [99.9, 0.1])
        spread = float(q999 - q01)
        result.measures.update(structure=structure, spread_over_noise=spread)
        if math.isfinite(structure) and structure < t["min_structure"]:
            if spread <= t["missing_spread"]:
                result.findings.append(Finding(
                    "missing", f"{name}: only background was acquired (no spatial structure, structure ratio "
                               f"{structure:.2f} against a shuffled copy; 99.8% of the values within {spread:g} of "
                               "each other): the stain is missing",
                    {"structure": structure, "min_structure": t["min_structure"], "spread_over_noise": spread}))
            else:
                result.findings.append(Finding(
                    "noise", f"{name}: the channel has no spatial structure (structure ratio {structure:.2f} "
                             f"against a shuffled copy, {t['min_structure']:g} needed): it is noise, not a stain",
                    {"structure": structure, "min_structure": t["min_structure"]}))
            continue  # a noise channel has no regions or shift to speak of

        if tissue_level is None:
            continue
        finding = misregistration(name, i, spectra, s.shape, partners, names, t, result.measures)
        if finding is not None:
            result.findings.append(finding)
        others_i = [j for j in informative if j != i]
        areas, measures, why = find_low_areas(name, s, [signals[j] for j in others_i], [names[j] for j in others_i], t)
        result.measures.update(measures)
        if why:
            result.not_assessed.append(why)
        for area in areas:
            result.findings.append(Finding(area["kind"], _area_sentence(name, area), area["evidence"], area["box"]))
    settle_mutual_shifts(out, names, spectra, data.shape[1:], partners, t)
    return out


def _empty_channel(name, i, counts, markers, names, t) -> Finding | None:
    """A missing finding for a marker with (almost) no signal pixels, where every *other* marker
    channel of the stack carries at least ``min_signal_px`` of them (background counts included):
    in such an acquisition an empty channel does not occur naturally, so this one lost its stain.
    Where other channels are empty too (sparse MIBI panels, markers absent from the tissue) an
    empty channel is ordinary and stays "not assessable"."""
    others = [j for j in markers if j != i]
    if len(others) < 2:
        return None
    lowest = min(others, key=lambda j: counts[j])
    floor = counts[lowest]
    if floor < t["min_signal_px"] or counts[i] >= t["missing_floor_ratio"] * floor:
        return None
    return Finding(
        "missing", f"{name}: almost nothing above background anywhere ({counts[i]} pixels), while every other "
                   f"marker of this stack has at least {floor} ({names[lowest]}): the stain is missing",
        {"signal_px": counts[i], "lowest_other_signal_px": floor, "lowest_other": names[lowest],
         "ratio": counts[i] / floor, "missing_floor_ratio": t["missing_floor_ratio"]})
