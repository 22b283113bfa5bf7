"""Which z-planes are in focus: the power-spectrum log-log slope (PLLS).

Paper 002 (3D virtual staining, section 2.2.1) keeps only in-focus planes of each
z-stack, scored by the PLLS of Bray et al. (2012): the radially averaged power spectrum
of a plane, and the slope of the straight line fitted to log(power) against
log(frequency). The frequency band follows CellProfiler's MeasureImageQuality
(centrosome's ``rps``): mean removed, power averaged over rings one frequency step
(1 / min(Y, X)) wide, fitted from the first ring above DC up to 1/8 cycle per pixel;
the upper part of the spectrum, where edge effects and camera noise dominate, is left
out. Pass ``band=(low, high)`` in cycles per pixel to change it. On a random image whose
power falls as frequency^-beta the score is -beta (tested).

Sign convention. The slope is negative. Blur removes high frequencies and makes it
steeper, so normally a sharper plane has a HIGHER (less negative) PLLS: that is Bray's
and CellProfiler's convention and the default here (``sharper="higher"``). Paper 002
reports the opposite on its noisy confocal stacks: there the high frequencies are
noise, equal in every plane, and the in-focus planes' extra power at medium
frequencies makes their slope steeper, so in-focus planes have a LOWER PLLS. Pass
``sharper="lower"`` for such data; look at the score plot first: the in-focus planes
sit at one end of the curve, the defocused planes at the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError, check_cancel
from ._common import checked_float_image

SHARPER = ("higher", "lower")
DEFAULT_BAND = (None, 0.125)  # cycles per pixel; None = the first ring above DC
MIN_FIT_RINGS = 3


@dataclass
class FocusSelection:
    """The result of :func:`select_in_focus`.

    ``indices``: the kept planes' z indices, in stack order. ``scores``: the PLLS of
    every plane (NaN for a blank plane). ``planes``: the kept planes, same dtype as the
    input, shape ``(N, Y, X)`` or ``(C, N, Y, X)``.
    """

    indices: np.ndarray
    scores: np.ndarray
    planes: np.ndarray
    sharper: str


def radial_power_spectrum(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean power on rings of the 2D spectrum of ``plane`` (mean removed), DC excluded.

    Returns ``(frequency, power)`` up to Nyquist: for each ring (one frequency step,
    1 / min(Y, X), wide) the mean frequency of its samples in cycles per pixel and their
    mean power. Using the samples' mean frequency rather than the ring's nominal radius
    keeps the fitted slope unbiased at the lowest rings, where a ring holds few samples.
    """
    values = np.asarray(plane, dtype=np.float64)
    values = values - values.mean()
    power = np.abs(np.fft.rfft2(values)) ** 2  # half plane: the spectrum of a real image is symmetric
    fy = np.fft.fftfreq(values.shape[0])[:, None]
    fx = np.fft.rfftfreq(values.shape[1])[None, :]
    freq = np.sqrt(fy**2 + fx**2)
    step = 1.0 / min(values.shape)
    ring = np.rint(freq / step).astype(np.int64)
    n_rings = int(0.5 / step) + 1  # up to Nyquist; the corners beyond are dropped
    inside = ring < n_rings
    ring, freq, power = ring[inside], freq[inside], power[inside]
    counts = np.bincount(ring, minlength=n_rings)
    used = counts > 0
    used[0] = False  # DC: zero after removing the mean
    mean_freq = np.bincount(ring, weights=freq, minlength=n_rings)[used] / counts[used]
    mean_power = np.bincount(ring, weights=power, minlength=n_rings)[used] / counts[used]
    return mean_freq, mean_power


def plls(plane: np.ndarray, band: tuple[float | None, float | None] = DEFAULT_BAND) -> float:
    """Power-spectrum log-log slope of one 2D plane over ``band`` (cycles per pixel).

    NaN for a constant plane (it has no spectrum). Raises InputError if the band holds
    fewer than 3 frequency rings (plane too small or band too narrow).
    """
    values = np.asarray(plane, dtype=np.float64)
    if values.ndim != 2:
        raise InputError(f"A focus score needs a 2D plane, not an array of shape {values.shape}.")
    if values.min() == values.max():
        return float("nan")
    freq, power = radial_power_spectrum(values)
    low, high = _band_limits(band, values.shape)
    keep = (freq >= low) & (freq <= high) & (power > 0)
    if np.count_nonzero(keep) < MIN_FIT_RINGS:
        raise InputError(
            f"The planes ({values.shape[0]}x{values.shape[1]} pixels) are too small for the "
            f"frequency band {low:.3g}-{high:.3g} cycles/pixel: widen the band or use larger planes."
        )
    slope, _ = np.polyfit(np.log(freq[keep]), np.log(power[keep]), 1)
    return float(slope)


def plls_scores(
    stack,
    *,
    band: tuple[float | None, float | None] = DEFAULT_BAND,
    channel: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> np.ndarray:
    """PLLS of every z-plane of a ``(Z, Y, X)`` or ``(C, Z, Y, X)`` stack, shape ``(Z,)``.

    For several channels the score of a plane is the mean of its channels' scores, or
    the score of ``channel`` alone. Blank (constant) planes score NaN.
    """
    values = _checked_stack(stack)
    if channel is not None:
        if not -values.shape[0] <= channel < values.shape[0]:
            raise InputError(
                f"Channel {channel} does not exist: the stack has {values.shape[0]} channel(s)."
            )
        channel %= values.shape[0]
        values = values[channel : channel + 1]
    n_channels, n_planes = values.shape[:2]
    scores = np.full((n_channels, n_planes), np.nan)
    total = n_channels * n_planes
    for c in range(n_channels):
        for z in range(n_planes):
            check_cancel(cancel)
            scores[c, z] = plls(values[c, z], band)
            if progress is not None:
                progress(c * n_planes + z + 1, total)
    blank = np.all(np.isnan(scores), axis=0)
    per_plane = np.full(n_planes, np.nan)
    per_plane[~blank] = np.nanmean(scores[:, ~blank], axis=0)
    return per_plane


def rank_planes(scores: np.ndarray, sharper: str = "higher") -> np.ndarray:
    """Plane indices from sharpest to blurriest; blank planes (NaN) come last."""
    _check_sharper(sharper)
    scores = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isnan(scores), np.inf, -scores if sharper == "higher" else scores)
    return np.argsort(key, kind="stable")


def select_in_focus(
    stack,
    *,
    keep: int | None = None,
    min_score: float | None = None,
    sharper: str = "higher",
    band: tuple[float | None, float | None] = DEFAULT_BAND,
    channel: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> FocusSelection:
    """Score every plane and keep the ``keep`` sharpest, or those at least as sharp as ``min_score``.

    ``min_score`` is a PLLS value: planes with PLLS >= min_score are kept when
    ``sharper="higher"``, PLLS <= min_score when ``sharper="lower"``. With neither
    ``keep`` nor ``min_score`` the single sharpest plane is kept. Kept planes stay in
    stack order. The input is not modified; ``planes`` is a new array.
    """
    _check_sharper(sharper)
    if keep is not None and min_score is not None:
        raise InputError("Choose either the number of planes to keep or a minimum score, not both.")
    array = np.asarray(stack)
    scores = plls_scores(array, band=band, channel=channel, progress=progress, cancel=cancel)
    n_planes = scores.shape[0]
    n_scored = int(np.count_nonzero(~np.isnan(scores)))
    if keep is None and min_score is None:
        keep = 1
    if keep is not None:
        if keep < 1:
            raise InputError(f"The number of planes to keep must be at least 1, not {keep}.")
        if keep > n_scored:
            raise InputError(
                f"Asked to keep {keep} planes but the stack has only {n_scored} non-blank "
                f"plane(s) out of {n_planes}."
            )
        chosen = rank_planes(scores, sharper)[:keep]
    else:
        with np.errstate(invalid="ignore"):
            passing = scores >= min_score if sharper == "higher" else scores <= min_score
        chosen = np.nonzero(passing)[0]
        if chosen.size == 0:
            best = scores[rank_planes(scores, sharper)[0]]
            raise InputError(
                f"No plane reaches the focus score {min_score:g} (the sharpest plane scores "
                f"{best:.3f}, sharper = {sharper}): lower the threshold or keep the N best planes."
            )
    indices = np.sort(chosen)
    planes = np.take(array, indices, axis=array.ndim - 3)
    return FocusSelection(indices=indices, scores=scores, planes=planes, sharper=sharper)


def _checked_stack(stack) -> np.ndarray:
    """``(Z, Y, X)`` -> ``(1, Z, Y, X)`` float32; ``(C, Z, Y, X)`` kept; anything else refused."""
    array = np.asarray(stack)
    if array.ndim == 2:
        raise InputError(
            "Focus selection needs a z-stack, but this image is a single plane "
            f"({array.shape[0]}x{array.shape[1]})."
        )
    if array.ndim not in (3, 4):
        raise InputError(
            f"Focus selection needs a (Z, Y, X) or (C, Z, Y, X) stack, not shape {array.shape}."
        )
    n_planes = array.shape[-3]
    if n_planes < 2:
        raise InputError(
            f"Focus selection needs a z-stack with at least 2 planes; this one has {n_planes}."
        )
    values = checked_float_image(array, min_ndim=3, what="z-stack")
    return values if values.ndim == 4 else values[None]


def _band_limits(band, shape) -> tuple[float, float]:
    low, high = band if band is not None else DEFAULT_BAND
    step = 1.0 / min(shape)
    low = step if low is None else float(low)
    high = 0.5 if high is None else float(high)
    if not 0 <= low < high <= 0.5 + 1e-9:
        raise InputError(
            f"The frequency band {low:g}-{high:g} cycles/pixel is invalid: it must lie within 0-0.5 "
            "with the low end below the high end."
        )
    return low, high


def _check_sharper(sharper: str) -> None:
    if sharper not in SHARPER:
        raise InputError(f"'sharper' must be 'higher' or 'lower', not {sharper!r}.")
