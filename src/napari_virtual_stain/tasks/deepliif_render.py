"""deepliif's pictures of classified cells: ``SegRefined`` and ``SegOverlaid``, pixel for pixel.

deepliif 1.2.7 (``create_cell_classification``, ``enlarge_cell_boundaries`` twice,
``create_final_images``) draws, for every counted cell:

- its pixels red (positive) or blue (negative);
- a green border on the *background* around it, three pixels wide: first the background
  pixels 4-adjacent to the cell, then twice the background pixels 8-adjacent to the border
  so far; uncounted regions (noise, too small, too large) are not background and stay black;
- the cell's first pixel in raster order green too (deepliif starts its flood fill there and
  marks it as border).

Where two cells' borders meet, deepliif's scan order decides the colour the border takes on
the overlay: the cell found first (lower label; our labels follow the same raster order),
then, while growing, the first bordering pixel in raster order. We compute the same with
whole-array shifts instead of per-pixel loops.
"""

from __future__ import annotations

import numpy as np

from .deepliif_cells import NEGATIVE, POSITIVE, CellAnalysis, Classification

GREEN, RED, BLUE = (0, 255, 0), (255, 0, 0), (0, 0, 255)
_FOUR = ((0, -1), (-1, 0), (1, 0), (0, 1))
# An enlarging pass takes the colour of the first border neighbour in raster order of the neighbour.
_EIGHT_RASTER = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]`` (``fill`` outside the image)."""
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out


def border_classes(analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """(Y, X) uint8: POSITIVE or NEGATIVE where deepliif draws a (green) border of that cell's class, else 0."""
    labels = analysis.labels
    classes = classification.classes
    kept = classes[labels] > 0  # pixels of counted cells
    background = labels == 0
    border = np.zeros(labels.shape, dtype=np.uint8)
    # each counted cell's first pixel in raster order is marked as border
    ids, first = np.unique(labels.ravel(), return_index=True)
    seeds = first[(ids > 0) & (classes[ids] > 0)]
    border.ravel()[seeds] = classes[labels.ravel()[seeds]]
    flood = kept.copy()
    flood.ravel()[seeds] = False
    # 1) background 4-adjacent to a cell pixel (not the seed): the lowest such cell label wins
    big = np.iinfo(np.int32).max
    source = np.where(flood, labels, big).astype(np.int32)
    nearest = np.full(labels.shape, big, dtype=np.int32)
    for dy, dx in _FOUR:
        np.minimum(nearest, _shifted(source, dy, dx, big), out=nearest)
    ring = background & (nearest < big)
    border[ring] = classes[nearest[ring]]
    # 2) twice: background 8-adjacent to the border so far, first neighbour in raster order wins
    for _ in range(2):
        grown = np.zeros_like(border)
        free = background & (border == 0)
        for dy, dx in _EIGHT_RASTER:
            neighbour = _shifted(border, dy, dx, 0)
            take = free & (grown == 0) & (neighbour > 0)
            grown[take] = neighbour[take]
        border = np.where(grown > 0, grown, border)
    return border


def render_refined(analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """deepliif's SegRefined: red positive, blue negative, green borders, black elsewhere."""
    pixel_class = classification.classes[analysis.labels]
    border = border_classes(analysis, classification)
    rgb = np.zeros(analysis.labels.shape + (3,), dtype=np.uint8)
    rgb[pixel_class == POSITIVE] = RED
    rgb[pixel_class == NEGATIVE] = BLUE
    rgb[border > 0] = GREEN  # the seed pixels lie inside their cells: border wins, as in deepliif
    return rgb


def render_overlay(ihc: np.ndarray, analysis: CellAnalysis, classification: Classification) -> np.ndarray:
    """deepliif's SegOverlaid: the IHC image with each counted cell's border in its class colour."""
    overlay = np.array(ihc[..., :3], dtype=np.uint8, copy=True)
    border = border_classes(analysis, classification)
    overlay[border == POSITIVE] = RED
    overlay[border == NEGATIVE] = BLUE
    return overlay
