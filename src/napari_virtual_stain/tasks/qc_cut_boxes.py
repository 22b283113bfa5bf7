"""Rectangles of one marker bounded by straight cuts, found anywhere in the field.

``tasks.qc_regions`` reads the edges of a candidate area around its lowest window. Where a
marker also has natural gaps (a compartment marker in sparse MIBI counts), the failed area
either is not the lowest window or merges with a gap next to it, and its edges are then read
on a box that is far from where the failure ended. This module looks for the failure's outline
itself: straight lines of the image grid along which the marker drops while its partners go on
(``tasks.qc_edges`` reads one side; here every line position is read), and rectangles whose
sides are such lines.

1. Per orientation (the area below, above, right or left of a line), at every
   ``box_line_step_px`` line position, segments of ``edge_segment_px`` along the line are read as
   in ``tasks.qc_edges``: a strip of ``edge_strip_px`` each side; a segment is *read* where its
   outside carries ordinary signal, *counts* where the partners' prediction goes on across the
   line, and is *cut* where it counts and the inside keeps under ``edge_sign_ratio`` of the
   outside.
2. A *cut line* is a span of at least ``edge_min_segments`` segments that starts and ends with a
   cut segment, with at least ``edge_min_judged`` counting segments, ``edge_min_cover`` of the
   read segments cut, and the pooled inside at most ``box_cut_ratio`` of the pooled outside.
   Per position the longest span is kept; of lines closer than a strip, the one with most cuts.
3. A rectangle is a pair of opposite cut lines (facing each other, at least
   ``edge_min_segments`` segments apart, their spans overlapping by half the shorter); its other
   two sides are matched by cut lines within ``box_side_tolerance_px`` of where they would be
   (over half the rectangle's side). The rectangle's sides are the pair plus those matched.

A natural gap ends along the tissue's curves and its partners' boundaries, which do not read as
long straight cut lines on several sides of one rectangle. How many sides a failure needs is
``min_cut_sides``, the number ``bench/calibrate_qc.py`` sets for ``tasks.qc_edges`` on clean real
fields; ``bench/qc_cut_boxes.py`` shows how low clean markers' rectangles of that many sides go.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

BOX_DEFAULTS: dict[str, float] = {
    "box_line_step_px": 4,
    "box_side_tolerance_px": 24,
    # a line's pooled inside against its outside: looser than one side's ``edge_cut_ratio``, because a
    # rectangle needs several such lines, and a 4-fold dimmed area read across a strip that straddles
    # its edge keeps about 0.3
    "box_cut_ratio": 0.45,
}
# orientation: the failed area lies below / above / right of / left of the line
_ORIENTATIONS = ("top", "bottom", "left", "right")


def _turned(image: np.ndarray, side: str) -> np.ndarray:
    """``image`` turned so that the area on the ``side`` of its outline lies right of the line."""
    if side == "left":
        return image
    if side == "right":
        return image[:, ::-1]
    if side == "top":
        return image.T
    return image.T[:, ::-1]


def _segment_columns(image: np.ndarray, seg: int) -> np.ndarray:
    """Per segment (``seg`` rows) and column: the mean, cumulated over columns (a leading 0)."""
    n = image.shape[0] // seg
    cols = image[:n * seg].astype(np.float64).reshape(n, seg, -1).mean(axis=1)
    return np.pad(cols, ((0, 0), (1, 0))).cumsum(axis=1)


def cut_lines(signal: np.ndarray, expected: np.ndarray, side: str, t: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cut lines (step 2) with the area on ``side`` of them: ``{"at", "start", "stop", "cuts"}`` in
    pixels of the image (``at`` across the line, ``start``/``stop`` along it)."""
    strip, seg, step = int(t["edge_strip_px"]), int(t["edge_segment_px"]), int(t["box_line_step_px"])
    image, pred = _turned(signal, side), _turned(expected, side)
    c, ce = _segment_columns(image, seg), _segment_columns(pred, seg)
    n, width = c.shape[0], image.shape[1]
    positions = np.arange(strip, width - strip + 1, step)
    if n < t["edge_min_segments"] or positions.size == 0:
        return []
    out = (c[:, positions] - c[:, positions - strip]) / strip
    inside = (c[:, positions + strip] - c[:, positions]) / strip
    e_out = ce[:, positions] - ce[:, positions - strip]
    e_in = ce[:, positions + strip] - ce[:, positions]
    level = float(signal.mean())
    per_segment_counts = t["edge_min_counts"] / t["edge_min_segments"]
    read = (out >= t["edge_min_outside"] * level) & (out * strip * seg >= per_segment_counts)
    counts = read & (e_in >= t["edge_expected_keep"] * e_out)
    cut = counts & (inside < t["edge_sign_ratio"] * out)

    def cum(a):
        return np.pad(np.asarray(a, np.float64), ((1, 0), (0, 0))).cumsum(axis=0)

    R, K, C = cum(read), cum(counts), cum(cut)
    IN, OUT = cum(np.where(counts, inside, 0.0)), cum(np.where(counts, out, 0.0))
    a, b = np.triu_indices(n + 1, k=int(t["edge_min_segments"]))
    span = lambda S: S[b] - S[a]  # noqa: E731  (pairs, positions)
    ok = (cut[a] & cut[b - 1]) & (span(K) >= t["edge_min_judged"]) \
        & (span(C) >= t["edge_min_cover"] * span(R)) & (span(IN) <= t["box_cut_ratio"] * span(OUT))
    lines = []
    for p in np.nonzero(ok.any(axis=0))[0]:
        pairs = np.nonzero(ok[:, p])[0]
        best = pairs[np.lexsort((-span(C)[pairs, p], -(b[pairs] - a[pairs])))[0]]
        lines.append({"at": int(positions[p]), "start": int(a[best]) * seg, "stop": int(b[best]) * seg,
                      "cuts": int(span(C)[best, p])})
    lines.sort(key=lambda ln: -ln["cuts"])
    kept: list[dict[str, Any]] = []
    for ln in lines:  # of lines closer than a strip with overlapping spans, the one with most cuts
        if not any(abs(ln["at"] - k["at"]) < strip and min(ln["stop"], k["stop"]) > max(ln["start"], k["start"])
                   for k in kept):
            kept.append(ln)
    flipped = {"right": signal.shape[1], "bottom": signal.shape[0]}.get(side)
    if flipped is not None:  # back to image coordinates: the line lies at width - position
        kept = [{**ln, "at": flipped - ln["at"]} for ln in kept]
    return kept


def _matching(lines, at: int, start: int, stop: int, tol: int) -> dict[str, Any] | None:
    """The line of ``lines`` within ``tol`` of ``at`` over more than half of [start, stop) that has most cuts."""
    near = [ln for ln in lines if abs(ln["at"] - at) <= tol
            and min(ln["stop"], stop) - max(ln["start"], start) > (stop - start) / 2]
    return max(near, key=lambda ln: ln["cuts"]) if near else None


def cut_boxes(signal: np.ndarray, expected: np.ndarray, t: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rectangles bounded by cut lines (step 3), most sides first: ``{"box": (y0, x0, y1, x1), "sides": [...],
    "lines": {side: cut line}}``."""
    lines = {s: cut_lines(signal, expected, s, t) for s in _ORIENTATIONS}
    tol = int(t["box_side_tolerance_px"])
    least = int(t["edge_min_segments"]) * int(t["edge_segment_px"])
    boxes = []
    for low, high, across in (("top", "bottom", ("left", "right")), ("left", "right", ("top", "bottom"))):
        for first in lines[low]:
            for second in lines[high]:
                if second["at"] - first["at"] < least:
                    continue  # the pair must face each other across an area of a side's least length
                overlap = min(first["stop"], second["stop"]) - max(first["start"], second["start"])
                if overlap <= min(first["stop"] - first["start"], second["stop"] - second["start"]) / 2:
                    continue
                start = (first["start"] + second["start"]) // 2
                stop = (first["stop"] + second["stop"]) // 2
                found = {low: first, high: second,
                         across[0]: _matching(lines[across[0]], start, first["at"], second["at"], tol),
                         across[1]: _matching(lines[across[1]], stop, first["at"], second["at"], tol)}
                found = {side: ln for side, ln in found.items() if ln is not None}
                box = (first["at"], start, second["at"], stop) if low == "top" else \
                    (start, first["at"], stop, second["at"])
                boxes.append({"box": tuple(int(v) for v in box), "sides": sorted(found), "lines": found})
    boxes.sort(key=lambda bx: -len(bx["sides"]))
    return boxes
