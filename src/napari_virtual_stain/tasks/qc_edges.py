"""Whether a low area of one marker ends in straight cuts: the edge evidence of a failed area.

A marker that is naturally absent from an area (keratin outside a duct, CD8 outside a T-cell
zone) fades out along the tissue's own curved boundaries, and its partners fade with it. An
area where the stain failed in acquisition (a tile or stripe that was not stained, imaged or
transferred; a lost field of a tiled scan) ends where the failure ended: along straight lines
of the image grid that cut through cells. So, per side of a candidate box:

- the marker's mean signal per line parallel to that side gives a profile across it;
- at the best position within ``edge_search_px`` of the box's side, the strip of
  ``edge_strip_px`` just inside is compared with the strip just outside;
- the side is *cut* when the outside strip carries ordinary signal (at least
  ``edge_min_outside`` of the marker's mean level off the box, and ``edge_min_counts``
  in all) and the inside strip keeps at most ``edge_cut_ratio`` of it.

Sides on the image border cannot be seen and are not judged, nor sides shorter than
``edge_min_segments`` segments (over a short span a curve is as good as straight). Of a long
side only the middle is read (``edge_search_px`` off each end, keeping at least that length), so
that a box drawn a little larger than the failure (a dimmed area's) reads its edge where the
failure is. This is evidence for straight-edged failures only: a failed
area with a ragged outline (a bubble, a fold) has to be found by the level checks alone.
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


def side_cut(signal: np.ndarray, box, side: str, outside_level: float, t: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"cover", "at"}`` of one side, or None where it cannot be judged (image border, too short).

    The side is read in segments of ``edge_segment_px``; at each position near the box's side a
    segment *shows a cut* when its outside strip carries ordinary signal and its inside strip keeps
    at most ``edge_cut_ratio`` of it. ``cover`` is the largest share of segments showing a cut at
    one position: a straight failure edge shows it along its length, a natural boundary (curved,
    crossing the line here and there) only where it happens to meet it."""
    image, (a0, b0, a1, b1) = _across(signal, box, side)
    reach, strip, seg = int(t["edge_search_px"]), int(t["edge_strip_px"]), int(t["edge_segment_px"])
    if a1 - a0 - 2 * reach >= t["edge_min_segments"] * seg:
        a0, a1 = a0 + reach, a1 - reach  # a long side's middle: where a box drawn a little large meets the failure
    n = (a1 - a0) // seg
    lo, hi = max(b0 - reach, strip), min(b0 + reach, b1 - strip)
    if n < t["edge_min_segments"] or hi < lo or b0 - reach < strip:
        return None  # on (or near) the image border, or too short to tell a straight line from a gentle curve
    rows = image[a0:a0 + n * seg].astype(np.float64)
    # per segment and column: the mean signal, so a strip's mean is a mean over its columns
    cols = rows.reshape(n, seg, -1).mean(axis=1)
    c = np.pad(cols, ((0, 0), (1, 0))).cumsum(axis=1)
    best = {"cover": 0.0, "at": 0}
    for e in range(lo, hi + 1):
        out = (c[:, e] - c[:, e - strip]) / strip
        inside = (c[:, e + strip] - c[:, e]) / strip
        shows = (out >= t["edge_min_outside"] * outside_level) & (out * strip * seg >= t["edge_min_counts"] / n) \
            & (inside <= t["edge_cut_ratio"] * out)
        cover = float(shows.mean())
        if cover > best["cover"]:
            best = {"cover": cover, "at": e - b0}
    return best


def cut_sides(signal: np.ndarray, box, t: Mapping[str, Any]) -> dict[str, Any]:
    """Per side of ``box`` (y0, x0, y1, x1): whether the marker is cut straight there, and how many are."""
    y0, x0, y1, x1 = box
    off = np.ones(signal.shape, bool)
    off[y0:y1, x0:x1] = False
    outside_level = float(signal[off].mean()) if off.any() else 0.0
    sides = {s: side_cut(signal, box, s, outside_level, t) for s in SIDES}
    judged = {s: v for s, v in sides.items() if v is not None}
    cut = [s for s, v in judged.items() if v["cover"] >= t["edge_min_cover"]]
    return {"cut": cut, "judged": sorted(judged), "cover": {s: round(v["cover"], 3) for s, v in judged.items()}}


def cut_enough(edges: Mapping[str, Any], t: Mapping[str, Any]) -> bool:
    """Whether ``edges`` (of :func:`cut_sides`) are evidence of a failed area: cut on ``min_cut_sides``
    sides, or on every side that can be seen (at least two: an area in a corner, a quadrant)."""
    judged = len(edges["judged"])
    return judged >= 2 and len(edges["cut"]) >= min(t["min_cut_sides"], judged)
