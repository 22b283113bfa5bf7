"""The misregistration check of the training-free QC: cell-scale cross-correlation of a marker
against its partner markers, and which of two markers shifted against each other moved."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .qc_findings import Finding


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


def misregistration(name, i, spectra, shape, partners, names, t, measures=None) -> Finding | None:
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


def settle_mutual_shifts(out, names, spectra, shape, partners, t) -> None:
    """A shifted marker makes its best partner look shifted the other way. Each misregistered
    finding is judged again without its partner; one that still shows the shift stays. One
    that does not was a shift between the two only, and the other markers ("third parties")
    say which of the two moved: put back by the shift, the one that moved matches them better
    (or displaced, the one that stayed loses its match), by ``min_shift_gain`` more than the
    other. The finding goes to that one (where both were flagged, only it keeps its finding).
    Where they do not tell, a lone finding stays, and a pair pointing at each other keeps both
    findings, each saying that one of the two rounds moved and the other markers cannot tell which
    (two markers that match only each other: a shift between them is real, its owner unknown)."""
    shifted = {n: f for n, r in out.items() for f in r.findings if f.kind == "misregistered"}
    keep, give, why, undecided = set(), {}, {}, {}
    for n, f in shifted.items():
        p = f.evidence["partner"]
        i, j = names.index(n), names.index(p)
        if misregistration(n, i, spectra, shape, [k for k in partners if k != j], names, t) is not None:
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
        # loses its match with the others when displaced. Else a lone finding stays, and so do both
        # findings of a pair pointing at each other
        if gain_n - gain_p >= t["min_shift_gain"]:
            keep.add(n)
        elif gain_p - gain_n >= t["min_shift_gain"]:
            why[n] = "its shift was against one partner only, and the other markers say that partner moved"
            if not mutual and p in out:
                give[p] = (n, f, gain_p, gain_n)
            elif not mutual:
                keep.add(n)  # the partner is not judged here (``only``): say what was measured
        else:
            keep.add(n)
            if mutual:  # both stay, each saying the other markers cannot tell which of the two moved
                undecided[n] = p
    for n, p in undecided.items():
        f = shifted[n]
        f.evidence["which_moved_unknown"] = True
        f.sentence = (f"{n} and {p} are shifted by {f.evidence['dy']:+d}, {f.evidence['dx']:+d} px (y, x) against each "
                      f"other (cell-scale correlation {f.evidence['peak']:.2f} there, {f.evidence['at_zero']:.2f} without "
                      "shift), and the other markers do not tell which of the two moved: one of these rounds is "
                      "misregistered")
    for n in shifted:
        if n not in keep:
            out[n].findings = [f for f in out[n].findings if f.kind != "misregistered"]
            out[n].measures["registration_cleared"] = why[n]
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
