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
  not blamed for them.
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
  match better displaced (the shifted round, not the partner it was measured against).
- **saturation**: a share of tissue pixels at the dtype's maximum.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .qc_regions import REGION_DEFAULTS, find_low_areas

THRESHOLDS_FILE = Path(__file__).with_name("qc_thresholds.json")

# Channels that are not stains of a marker: MIBI's elemental, mass-calibration and
# background channels, and derived composites. They are not judged, nor used as tissue.
NOT_MARKERS = {"background", "bg", "au", "na", "c", "ca", "fe", "p", "si", "ta", "empty", "noodle",
               "membrane", "nuc", "bckg", "gold", "130", "131"}

DEFAULTS: dict[str, float] = {
    "background_percentile": 1.0,
    "min_signal_px": 400,  # signal pixels needed before a marker can be judged at all
    "rate_sigma": 5.0,  # px: the neighbourhood of a local rate (about a cell)
    "tissue_sigma": 12.0,
    "tissue_fraction_of_p75": 0.25,  # tissue = other markers above this share of their 75th percentile
    "structure_sigma": 2.0,
    "min_structure": 1.25,  # smoothed variance / shuffled smoothed variance
    "missing_spread": 2.0,  # no structure and the 0.1-99.9th percentiles this close: background only
    "missing_floor_ratio": 0.25,  # an empty channel: signal pixels below this share of the emptiest other marker's
    "shift_band": [1.5, 8.0],
    "max_shift": 25,
    "min_shift": 3,
    "shift_partners": 8,  # the markers with most signal, each marker is registered against
    "min_shift_peak": 0.2,  # cell-scale correlation with the best partner at the shift found
    "min_shift_peak_alone": 0.35,  # ... when the second-best partner does not confirm the shift
    "min_shift_gain": 0.1,  # ... above its correlation without shift
    "max_zero_share": 0.5,  # ... which is at most this share of the peak (the cells no longer overlap)
    "saturation_fraction": 0.01,
    **REGION_DEFAULTS,
}


@lru_cache(maxsize=1)
def _calibrated() -> dict[str, Any]:
    if THRESHOLDS_FILE.exists():
        return json.loads(THRESHOLDS_FILE.read_text())
    return {}


def thresholds(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The defaults, updated by the calibrated file, updated by ``overrides``."""
    out = dict(DEFAULTS)
    out.update(_calibrated().get("thresholds", {}))
    out.update(overrides or {})
    return out


@dataclass
class Finding:
    """One failure of one marker: its class, where (None: the whole channel) and the numbers behind it."""

    kind: str  # blank_region | dim_region | missing | noise | misregistered | saturated | imputation
    sentence: str
    evidence: dict[str, Any]
    box: tuple[int, int, int, int] | None = None  # y0, x0, y1, x1 in the stack's pixels (stop exclusive)

    def to_dict(self, offset: Sequence[int] = (0, 0)) -> dict[str, Any]:
        out = {"class": self.kind, "sentence": self.sentence, "evidence": _plain(self.evidence)}
        if self.box is not None:
            y0, x0, y1, x1 = self.box
            out["start"] = [y0 + int(offset[0]), x0 + int(offset[1])]
            out["stop"] = [y1 + int(offset[0]), x1 + int(offset[1])]
        return out


@dataclass
class MarkerChecks:
    marker: str
    assessable: bool
    findings: list[Finding] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    not_assessed: list[str] = field(default_factory=list)  # checks that could not judge it, with why


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return round(v, 4) if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def is_marker(name: str) -> bool:
    return str(name).strip().lower() not in NOT_MARKERS


def signal_of(channel: np.ndarray, percentile: float) -> tuple[np.ndarray, float, float]:
    """The channel above its background (a low percentile), that background and its noise (MAD)."""
    x = np.asarray(channel, dtype=np.float32)
    background = float(np.percentile(x, percentile))
    low = x[x <= np.percentile(x, 50)]
    noise = float(1.4826 * np.median(np.abs(low - np.median(low)))) if low.size else 0.0
    return np.clip(x - background, 0, None), background, noise


def tissue_evidence(signals: Sequence[np.ndarray], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per marker, each signal smoothed and scaled by its own 99th percentile, clipped to [0, 1]
    (``(K, Y, X)``: a sparse marker's rare bright spots cannot outweigh the others), and their sum."""
    scaled = []
    for s in signals:
        smooth = ndimage.gaussian_filter(s, sigma, mode="reflect")
        high = float(np.percentile(smooth, 99))
        scaled.append(np.clip(smooth / high, 0, 1) if high > 0 else np.zeros_like(smooth))
    if not scaled:
        return np.zeros((0, 1, 1), np.float32), np.zeros((1, 1), np.float32)
    scaled = np.stack(scaled)
    return scaled, scaled.sum(axis=0)


def structure_ratio(signal: np.ndarray, sigma: float, seed: int = 0) -> float:
    """Variance of the smoothed signal over that of the smoothed shuffled signal (1 = no structure)."""
    smooth_var = float(ndimage.gaussian_filter(signal, sigma).var())
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(signal.ravel()).reshape(signal.shape)
    shuffled_var = float(ndimage.gaussian_filter(shuffled, sigma).var())
    return smooth_var / shuffled_var if shuffled_var > 0 else math.nan


def _band(image: np.ndarray, band: Sequence[float]) -> np.ndarray:
    return ndimage.gaussian_filter(image, band[0]) - ndimage.gaussian_filter(image, band[1])


def registration_spectrum(signal: np.ndarray, band: Sequence[float]) -> np.ndarray | None:
    """The Fourier transform of a marker band-passed to cell scale, windowed and scaled to unit energy."""
    a = _band(signal.astype(np.float32), band)
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1])).astype(np.float32)
    a = (a - a.mean()) * window
    energy = float(np.sqrt((a * a).sum()))
    return np.fft.rfft2(a / energy) if energy > 0 else None


def registration_shift(reference: np.ndarray, moving: np.ndarray, shape: Sequence[int],
                       max_shift: int) -> dict[str, float]:
    """Shift (dy, dx) that best aligns ``moving`` to ``reference`` (spectra of
    :func:`registration_spectrum`), searched within ``max_shift`` pixels: the cross-correlation
    of the two (FFT, as phase correlation does, without whitening, which sparse counts do not
    survive), its peak and its value at no shift (both Pearson-like, -1..1)."""
    xc = np.fft.irfft2(reference * np.conj(moving), s=tuple(shape))
    r = int(min(max_shift, shape[0] // 4, shape[1] // 4))
    shifts = np.arange(-r, r + 1)
    local = xc[np.ix_(shifts % shape[0], shifts % shape[1])]
    iy, ix = np.unravel_index(int(np.argmax(local)), local.shape)
    # xc[s] = sum ref(x) mov(x - s): moving's content sits s further along than the reference's
    return {"dy": -int(shifts[iy]), "dx": -int(shifts[ix]), "peak": float(local[iy, ix]),
            "at_zero": float(local[r, r])}


def correlation_at(reference: np.ndarray, moving: np.ndarray, shape: Sequence[int], dy: int, dx: int) -> float:
    """The cross-correlation of :func:`registration_shift` at one shift: ``moving`` displaced by (dy, dx)."""
    xc = np.fft.irfft2(reference * np.conj(moving), s=tuple(shape))
    return float(xc[(-dy) % shape[0], (-dx) % shape[1]])


def best_shift(k: int, spectra: Sequence, shape: Sequence[int], partners: Sequence[int],
               max_shift: int, min_gain: float = 0.1) -> dict[str, Any] | None:
    """Marker ``k`` against each partner marker; the partner it correlates with best decides, and
    the second best says whether it agrees: its own best shift lies within 2 px, or it too
    correlates better with ``k`` at that shift than without shift (by ``min_gain``; its own
    maximum may lie elsewhere when it matches ``k`` only weakly)."""
    found = []
    for j in partners:
        if j == k or spectra[j] is None or spectra[k] is None:
            continue
        found.append(registration_shift(spectra[j], spectra[k], shape, max_shift) | {"partner": j})
    if not found:
        return None
    found.sort(key=lambda f: -f["peak"])
    best = dict(found[0])
    if len(found) > 1:
        second = found[1]
        near = abs(second["dy"] - best["dy"]) <= 2 and abs(second["dx"] - best["dx"]) <= 2
        at_best = correlation_at(spectra[second["partner"]], spectra[k], shape, best["dy"], best["dx"])
        best["agree"] = bool(near or at_best - second["at_zero"] >= min_gain)
        best["second_peak"] = second["peak"]
        best["second_at_shift"] = at_best
    else:
        best["agree"] = True
    return best


def third_party_gain(k: int, dy: int, dx: int, spectra: Sequence, shape: Sequence[int],
                     thirds: Sequence[int]) -> float:
    """How much better marker ``k`` matches the ``thirds`` markers displaced by (dy, dx) than in
    place: its best correlation with any of them displaced minus its best in place (which of
    two markers shifted against each other moved). Best against best, not pair by pair: a
    nuclear marker anti-correlates with a cytoplasmic one at cell scale, and displacing it
    would "gain" by merely losing that."""
    usable = [j for j in thirds if spectra[j] is not None]
    if spectra[k] is None or not usable:
        return 0.0
    displaced = max(correlation_at(spectra[j], spectra[k], shape, dy, dx) for j in usable)
    in_place = max(correlation_at(spectra[j], spectra[k], shape, 0, 0) for j in usable)
    return displaced - in_place


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
        finding = _misregistration(name, i, spectra, s.shape, partners, names, t, result.measures)
        if finding is not None:
            result.findings.append(finding)
        others_i = [j for j in informative if j != i]
        areas, measures, why = find_low_areas(name, s, [signals[j] for j in others_i], [names[j] for j in others_i], t)
        result.measures.update(measures)
        if why:
            result.not_assessed.append(why)
        for area in areas:
            result.findings.append(Finding(area["kind"], _area_sentence(name, area), area["evidence"], area["box"]))
    _settle_mutual_shifts(out, names, spectra, data.shape[1:], partners, t)
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


def _misregistration(name, i, spectra, shape, partners, names, t, measures=None) -> Finding | None:
    """A misregistered finding for marker ``i`` against ``partners`` (indices), or None."""
    shift = best_shift(i, spectra, shape, partners, int(t["max_shift"]), t["min_shift_gain"])
    if shift is None:
        return None
    partner = names[shift.pop("partner")]
    shift["partner"] = partner
    if measures is not None:
        measures["registration"] = shift
    distance = math.hypot(shift["dy"], shift["dx"])
    clear = shift["peak"] >= (t["min_shift_peak"] if shift["agree"] else t["min_shift_peak_alone"])
    gone = shift["at_zero"] <= t["max_zero_share"] * shift["peak"]  # cells no longer overlap at no shift
    if not (distance >= t["min_shift"] and clear and gone and shift["peak"] - shift["at_zero"] >= t["min_shift_gain"]):
        return None
    return Finding("misregistered", f"{name} is shifted by {shift['dy']:+d}, {shift['dx']:+d} px (y, x) against "
                                    f"{partner} and the other markers (cell-scale correlation {shift['peak']:.2f} "
                                    f"there, {shift['at_zero']:.2f} without shift): this round is misregistered",
                   {k: shift[k] for k in ("dy", "dx", "peak", "at_zero", "partner", "agree")})


def _settle_mutual_shifts(out, names, spectra, shape, partners, t) -> None:
    """A shifted marker makes its best partner look shifted the other way. Each misregistered
    finding is judged again without its partner; one that still shows the shift stays. One
    that does not was a shift between the two only, and the other markers ("third parties")
    say which of the two moved: put back by the shift, the one that moved matches them better
    (or displaced, the one that stayed loses its match), by ``min_shift_gain`` more than the
    other. The finding goes to that one (where both were flagged, only it keeps its finding).
    Where they do not tell, a lone finding stays and a pair pointing at each other is cleared."""
    shifted = {n: f for n, r in out.items() for f in r.findings if f.kind == "misregistered"}
    keep, give, why = set(), {}, {}
    for n, f in shifted.items():
        p = f.evidence["partner"]
        i, j = names.index(n), names.index(p)
        if _misregistration(n, i, spectra, shape, [k for k in partners if k != j], names, t) is not None:
            keep.add(n)
            continue
        # every other marker with signal (not only the registration partners): a marker that matches
        # few others may match one of the less abundant ones
        thirds = [k for k in range(len(spectra)) if spectra[k] is not None and k not in (i, j)]
        dy, dx = f.evidence["dy"], f.evidence["dx"]
        gain_n = third_party_gain(i, dy, dx, spectra, shape, thirds)
        gain_p = third_party_gain(j, -dy, -dx, spectra, shape, thirds)
        f.evidence.update(third_party_gain=gain_n, partner_third_party_gain=gain_p)
        g = shifted.get(p)
        mutual = g is not None and abs(g.evidence["dy"] + dy) <= 2 and abs(g.evidence["dx"] + dx) <= 2
        # the third parties decide only when their verdicts differ by min_shift_gain (the gain a shift
        # needs against its partner): the one that moved gains by being put back, or the one that stayed
        # loses its match with the others when displaced. Else the old rule stands: a lone finding
        # stays, a pair pointing at each other is cleared
        if gain_n - gain_p >= t["min_shift_gain"]:
            keep.add(n)
        elif gain_p - gain_n >= t["min_shift_gain"]:
            why[n] = "its shift was against one partner only, and the other markers say that partner moved"
            if not mutual and p in out:
                give[p] = (n, f, gain_p, gain_n)
            elif not mutual:
                keep.add(n)  # the partner is not judged here (``only``): say what was measured
        elif not mutual:
            keep.add(n)
    for n in shifted:
        if n not in keep:
            out[n].findings = [f for f in out[n].findings if f.kind != "misregistered"]
            out[n].measures["registration_cleared"] = why.get(n, (
                "its shift was against one partner only, which was shifted the other way against it, and the other "
                "markers do not tell which of the two moved"))
    for p, (n, f, gain_p, gain_n) in give.items():
        if any(x.kind == "misregistered" for x in out[p].findings):
            continue
        dy, dx = -f.evidence["dy"], -f.evidence["dx"]
        out[p].findings.append(Finding(
            "misregistered", f"{p} is shifted by {dy:+d}, {dx:+d} px (y, x) against {n} (cell-scale correlation "
                             f"{f.evidence['peak']:.2f} there, {f.evidence['at_zero']:.2f} without shift), and the "
                             f"other markers match {p} better displaced so ({gain_p:+.2f}) than {n} ({gain_n:+.2f}): "
                             "this round is misregistered",
            {"dy": dy, "dx": dx, "peak": f.evidence["peak"], "at_zero": f.evidence["at_zero"], "partner": n,
             "agree": False, "third_party_gain": gain_p, "partner_third_party_gain": gain_n}))


def _area_sentence(name: str, area: Mapping[str, Any]) -> str:
    e = area["evidence"]
    where = f"over {e['area_px']} px"
    against = (f"{e['observed']:.0f} against {e['expected']:.0f} expected from {', '.join(e['predicted_from'][:3])} "
               f"there; elsewhere it never falls below {e['lowest_ratio_elsewhere']:.2f}x of its expected level")
    if area["kind"] == "blank_region":
        return f"{name} is blank {where} ({against})"
    return f"{name} is dimmed {1 / max(e['worst_window_ratio'], 1e-3):.1f}-fold {where} ({against})"
