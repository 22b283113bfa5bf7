"""Whether a low area of one marker ends in straight cuts: the edge evidence of a failed area.

A marker that is naturally absent from an area (keratin outside a duct, CD8 outside a T-cell
zone) fades out along the tissue's own curved boundaries, and its partners fade with it. An
area where the stain failed in acquisition (a tile or stripe that was not stained, imaged or
transferred; a lost field of a tiled scan) ends where the failure ended: along straight lines
of the image grid that cut through cells. So, per side of a candidate box:

- the marker's mean signal per line parallel to that side gives a profile across it, read
  in segments of ``edge_segment_px`` along the side;
- at the best position within ``edge_search_px`` of the box's side, the strip of
  ``edge_strip_px`` just inside is compared with the strip just outside, segment by segment;
- a segment is read where its outside strip carries ordinary signal (at least
  ``edge_min_outside`` of the marker's mean level off the box, and ``edge_min_counts`` in
  all);
- of those, a segment *counts* where the marker's partners (the other markers that predict
  it, ``tasks.qc_regions``) go on across the line: their prediction inside is at least
  ``edge_expected_keep`` of outside. Where the partners stop too, the line is a tissue
  boundary there, not a cut;
- the side is *cut* when, over at least ``edge_min_judged`` counting segments, the inside
  keeps at most ``edge_cut_ratio`` of the outside's signal in all, and nearly every segment
  read (``edge_min_cover``) counts and is below ``edge_sign_ratio`` of its outside on its
  own. Pooling makes a sparse marker's cut visible (a few counts per segment), the segment
  count makes it straight (a curved boundary crosses the line here and there). Judged
  segment by segment, the partners' test is stricter than pooled over the side: pooled, a
  tissue boundary along part of a side passes (clean calibration dips then showed 3 cut sides).

Sides on the image border cannot be seen and are not judged, nor sides shorter than
``edge_min_segments`` segments (over a short span a curve is as good as straight). Of a long
side only the middle is read (``edge_search_px`` off each end, keeping at least that length), so
that a box drawn a little larger than the failure (a dimmed area's) reads its edge where the
failure is. This is evidence for straight-edged failures only: a failed
area with a ragged outline (a bubble, a fold) has to be found by the level checks alone.
Where a dense marker alone is absent from a round compartment its partners fill, a box
inscribed in it reads nearly straight on a side or two (a chord of a 170 px disc is within a
strip's width over 96 px): how many cut sides a failed area needs is therefore calibrated on
clean real fields (``bench/calibrate_qc.py``: one more than any clean dip shows).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

EDGE_DEFAULTS: dict[str, float] = {
    "edge_search_px": 32,
    "edge_strip_px": 8,
    "edge_min_outside": 0.5,
    "edge_min_counts": 40.0,
    "edge_cut_ratio": 0.3,
    "edge_segment_px": 24,
    "edge_min_cover": 0.75,
    "edge_min_segments": 4,  # a side read over less than 4 segments (96 px) cannot tell a straight cut from a curve
    "edge_min_judged": 3,  # segments with outside signal (and partners going on) a cut needs
    "edge_expected_keep": 0.5,
    "edge_sign_ratio": 0.5,
}
SIDES = ("top", "bottom", "left", "right")


def _across(signal: np.ndarray, box, side: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image turned so that ``side`` is a left edge, and the box in the turned image."""
    y0, x0, y1, x1 = box
    h, w = signal.shape
    if side == "left":
        return signal, (y0, x0, y1, x1)
    if side == "right":
        return signal[:, ::-1], (y0, w - x1, y1, w - x0)
    if side == "top":
        return signal.T, (x0, y0, x1, y1)
    return signal.T[:, ::-1], (x0, h - y1, x1, h - y0)


def side_cut(signal: np.ndarray, box, side: str, outside_level: float, t: Mapping[str, Any],
             expected: np.ndarray | None = None) -> dict[str, Any] | None:
    """``{"cover", "at"}`` of one side, or None where it cannot be judged (image border, too short).

    ``cover`` is, at the position along the side that shows it best, the share of the segments
    with outside signal that show a cut (0 where the pooled inside keeps more than
    ``edge_cut_ratio``). ``expected``: the marker as its partners predict it (same shape as
    ``signal``); without it every segment with outside signal counts."""
    image, (a0, b0, a1, b1) = _across(signal, box, side)
    reach, strip, seg = int(t["edge_search_px"]), int(t["edge_strip_px"]), int(t["edge_segment_px"])
    if a1 - a0 - 2 * reach >= t["edge_min_segments"] * seg:
        a0, a1 = a0 + reach, a1 - reach  # a long side's middle: where a box drawn a little large meets the failure
    n = (a1 - a0) // seg
    lo, hi = max(b0 - reach, strip), min(b0 + reach, b1 - strip)
    if n < t["edge_min_segments"] or hi < lo or b0 - reach < strip:
        return None  # on (or near) the image border, or too short to tell a straight line from a gentle curve

    def strips(img):
        # per segment and column: the mean, so a strip's mean is a mean over its columns (cumulated)
        cols = img[a0:a0 + n * seg].astype(np.float64).reshape(n, seg, -1).mean(axis=1)
        return np.pad(cols, ((0, 0), (1, 0))).cumsum(axis=1)

    c = strips(image)
    ce = strips(_across(expected, box, side)[0]) if expected is not None else None
    best = {"cover": 0.0, "at": 0}
    for e in range(lo, hi + 1):
        out = (c[:, e] - c[:, e - strip]) / strip
        inside = (c[:, e + strip] - c[:, e]) / strip
        judgeable = (out >= t["edge_min_outside"] * outside_level) & (out * strip * seg >= t["edge_min_counts"] / n)
        keep = judgeable
        if ce is not None:  # segment by segment: where the partners stop too, a tissue boundary
            keep = keep & ((ce[:, e + strip] - ce[:, e]) >= t["edge_expected_keep"] * (ce[:, e] - ce[:, e - strip]))
        if keep.sum() < t["edge_min_judged"] or inside[keep].sum() > t["edge_cut_ratio"] * out[keep].sum():
            continue
        cover = float((inside[keep] < t["edge_sign_ratio"] * out[keep]).sum() / judgeable.sum())
        if cover > best["cover"]:
            best = {"cover": cover, "at": e - b0}
    return best


def cut_sides(signal: np.ndarray, box, t: Mapping[str, Any], expected: np.ndarray | None = None) -> dict[str, Any]:
    """Per side of ``box`` (y0, x0, y1, x1): whether the marker is cut straight there, and how many are
    (``expected``: the marker as its partners predict it, :func:`side_cut`)."""
    y0, x0, y1, x1 = box
    off = np.ones(signal.shape, bool)
    off[y0:y1, x0:x1] = False
    outside_level = float(signal[off].mean()) if off.any() else 0.0
    sides = {s: side_cut(signal, box, s, outside_level, t, expected) for s in SIDES}
    judged = {s: v for s, v in sides.items() if v is not None}
    cut = [s for s, v in judged.items() if v["cover"] >= t["edge_min_cover"]]
    return {"cut": cut, "judged": sorted(judged), "cover": {s: round(v["cover"], 3) for s, v in judged.items()}}


def cut_enough(edges: Mapping[str, Any], t: Mapping[str, Any]) -> bool:
    """Whether ``edges`` (of :func:`cut_sides`) are evidence of a failed area: cut on ``min_cut_sides``
    sides, or on every side that can be seen (at least two: an area in a corner, a quadrant)."""
    judged = len(edges["judged"])
    return judged >= 2 and len(edges["cut"]) >= min(t["min_cut_sides"], judged)
