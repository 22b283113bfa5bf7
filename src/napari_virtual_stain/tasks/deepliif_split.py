"""Split touching nuclei inside DeepLIIF cell regions: an option of *our* models' cell rules.

deepliif 1.2.7 makes a cell of every connected region of cell pixels. A network whose
segmentation is cut low (the bundled ``deepliif-small``'s own threshold) joins touching pale
nuclei into one region where deepliif's own networks draw a green border between them.
:func:`split_regions` cuts such a region where its shape says two nuclei meet:

- the Euclidean distance transform of the region (distance to the nearest non-cell pixel)
  has one peak per round nucleus and a saddle where two meet;
- a peak counts when it rises at least ``h`` pixels above the lowest point of every path to
  an equal or higher peak (the regional maxima of the reconstruction by dilation of the
  distance minus ``h``, Soille's h-maxima transform): a neck narrower than both nuclei by
  ``h`` px on each side is a cut, a bump on one nucleus's outline is not;
- a region with two or more such peaks is divided by a watershed on the negated distance,
  seeded by the peaks, with a one-pixel background line between the pieces (so deepliif's
  drawing puts a green border there and every scorer sees separate cells); a region with
  one peak or none is left exactly as it was.

Regions are handled a band of rows at a time, so memory stays bounded whatever the image
size, and the split cells keep deepliif's order (raster order of each
cell's first pixel). The steps are computed in cheaper but exact ways (the same labels,
bit for bit, as scipy's ``distance_transform_edt``, skimage's grey ``reconstruction`` and a
watershed on the whole window; tests/test_deepliif_split.py keeps that first implementation
and checks it): integer squared distances, the reconstruction by repeated 3 x 3 geodesic
dilations of small integer codes (:func:`dome_order`), the watershed in the box of the regions
it cuts; 0.04-0.11 s per 512 x 512 view instead of 0.15-0.28 s (bench/RESULTS.md), most of
it now the watershed itself, which stays skimage's over the whole box: the order in which it
takes its tied markers depends on all of them, so region by region could move a line pixel. Official release folders and maps a user brought never get a split:
their cards carry no ``split`` value (see ``deepliif_cells.model_thresholds``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import morphology, segmentation

EIGHT = np.ones((3, 3), dtype=bool)
STEPS = 3  # geodesic dilations between two looks at what changed
BAND_ROWS = 512  # regions starting in these rows are split in one window (a 512 x 512 view: one; memory about 40 bytes per pixel of it)


def dome_markers(region: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(distance transform, marker labels, how many) of a boolean cell mask whose outer frame of
    pixels is background.

    The markers are the maxima of the reconstruction of (distance - h) under the distance: one
    per dome at least ``h`` deep. Not skimage's ``h_maxima``, which also keeps every *global*
    maximum, so two equal peaks (common: the distances are square roots of integers) would
    always be cut, whatever ``h``.
    """
    squared = squared_distance(region)
    markers, n = ndimage.label(morphology.local_maxima(dome_order(squared, h)[0], connectivity=2) & region,
                               structure=EIGHT)
    return np.sqrt(squared, dtype=np.float64), markers, n


def squared_distance(region: np.ndarray) -> np.ndarray:
    """The exact squared Euclidean distance (integers) of every pixel of a boolean mask to the
    nearest background pixel; the mask's outer frame must be background.

    What ``scipy.ndimage.distance_transform_edt`` squares, about 4 times faster on nuclei: the
    distance along the row first (the frame gives every row a background pixel), then the
    nearest over the rows above and below, stopping once the row offset alone is as far as the
    farthest pixel found (nuclei: some 20 rows).
    """
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2 or min(region.shape) < 3 or region[[0, -1]].any() or region[:, [0, -1]].any():
        raise ValueError("the distance needs a 2-D mask whose outer frame of pixels is background")
    height, width = region.shape
    cols = np.arange(width, dtype=np.int32)
    left = np.maximum.accumulate(np.where(region, 0, cols), axis=1)  # column of the last background pixel at or left
    right = np.minimum.accumulate(np.where(region, width, cols)[:, ::-1], axis=1)[:, ::-1]
    along = np.minimum(cols - left, right - cols)
    # uint16 while no sum below can pass 65535 (a distance under 180 px); int64 beyond
    dtype = np.uint16 if int(along.max()) < 180 else np.int64
    along = along.astype(dtype) ** 2
    best = along.copy()
    step = np.empty_like(best)
    dy = 1
    while dy < height and dy * dy < int(best.max()):
        np.add(along[:-dy], dy * dy, out=step[dy:])  # from the row dy above
        np.minimum(best[dy:], step[dy:], out=best[dy:])
        np.add(along[dy:], dy * dy, out=step[:-dy])  # from the row dy below
        np.minimum(best[:-dy], step[:-dy], out=best[:-dy])
        dy += 1
    return best


def dome_order(squared: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, values): ``values[codes]`` is the reconstruction by dilation of (d - h) under d,
    d = sqrt(``squared``), exactly (the same floats as ``skimage.morphology.reconstruction``);
    the codes (small unsigned integers) are ordered as those values, so their maxima are its maxima.

    Why it is fast and exact. d = 0 on the frame, so when the deepest pixel is no more than ``h``
    deep every pixel is linked to it through values >= its seed: the reconstruction is one
    constant, d.max() - h. Otherwise it is positive on every region that holds a pixel deeper
    than ``h``, 0 elsewhere, and equals the reconstruction of max(d - h, 0) under d, where the
    background (d = 0) is a wall that no value crosses: regions are independent. That one is
    reached by geodesic dilations (3 x 3, as skimage's default footprint) from below, each
    exact, repeated until nothing changes (about as many as the longest path a peak's value
    travels: 20-60 px on nuclei), on integer codes of the few hundred distinct values and in
    the shrinking box where something still changed.
    """
    squared = np.asarray(squared)
    present = np.flatnonzero(np.bincount(squared.ravel()))
    root = np.sqrt(present.astype(np.float64))
    top = float(root[-1]) - h
    if top <= 0:
        return np.zeros(squared.shape, dtype=np.uint8), np.array([top])
    raised = np.maximum(root - h, 0.0)
    values = np.unique(np.concatenate([root, raised]))
    dtype = np.uint16 if values.size <= 1 << 16 else np.uint32
    index = np.zeros(int(present[-1]) + 1, dtype=np.intp)
    index[present] = np.arange(present.size)
    which = index[squared]
    cap = np.searchsorted(values, root).astype(dtype)[which]
    codes = np.searchsorted(values, raised).astype(dtype)[which]
    r0, r1, c0, c1 = 1, codes.shape[0] - 1, 1, codes.shape[1] - 1  # the frame (d = 0) never changes
    while True:
        before = codes[r0:r1, c0:c1].copy()
        for _ in range(STEPS):
            box = codes[r0 - 1:r1 + 1, c0 - 1:c1 + 1]
            rows = np.maximum(box[:-2], box[1:-1])  # all from the old values: the 3 x 3 maxima
            np.maximum(rows, box[2:], out=rows)
            inner = codes[r0:r1, c0:c1]
            np.maximum(rows[:, :-2], rows[:, 1:-1], out=inner)
            np.maximum(inner, rows[:, 2:], out=inner)
            np.minimum(inner, cap[r0:r1, c0:c1], out=inner)
        changed = before != codes[r0:r1, c0:c1]
        changed_rows = np.flatnonzero(changed.any(axis=1))
        if changed_rows.size == 0:
            return codes, values
        changed_cols = np.flatnonzero(changed.any(axis=0))
        # a pixel farther than STEPS from every change kept its value in the last step: settled
        r0, r1 = max(r0 + changed_rows[0] - STEPS, 1), min(r0 + changed_rows[-1] + 1 + STEPS, codes.shape[0] - 1)
        c0, c1 = max(c0 + changed_cols[0] - STEPS, 1), min(c0 + changed_cols[-1] + 1 + STEPS, codes.shape[1] - 1)


def split_regions(labels: np.ndarray, h: int, rows: int = BAND_ROWS) -> np.ndarray:
    """``labels`` (int32, 0 = background, regions 8-connected) with touching nuclei split (see the module).

    ``h``: the h-maxima depth in pixels (1 or more). Returns new labels numbered in raster order
    of each cell's first pixel; ``labels`` itself is not changed.

    The regions are taken in bands of ``rows`` rows (those whose first row lies in the band),
    each band's regions in one window: no two regions touch (they are 8-connected components),
    so the nearest non-cell pixel of a region's pixel is always background and every region's
    distances, domes and watershed are what they would be alone. One window per band keeps the
    calls few (a 512 x 512 view is one) and the memory bounded on a whole slide.
    """
    h = int(h)
    if h < 1:
        raise ValueError(f"the split depth must be 1 pixel or more, not {h}")
    out = np.array(labels, dtype=np.int32, copy=True)
    n_labels = int(out.max(initial=0))
    if n_labels == 0:
        return out
    smallest = 2 * (h + 1) ** 2  # one disc of radius h + 1 at least per dome: a smaller region has one or none
    areas = np.bincount(out.ravel(), minlength=n_labels + 1)
    boxes = ndimage.find_objects(out)
    first_row = np.array([b[0].start if b is not None else -1 for b in boxes])
    candidates = np.nonzero((areas[1:] >= smallest) & (first_row >= 0))[0] + 1
    next_id = n_labels + 1
    for start in range(0, out.shape[0], rows):
        ids = candidates[(first_row[candidates - 1] >= start) & (first_row[candidates - 1] < start + rows)]
        if ids.size == 0:
            continue
        window = tuple(slice(max(min(boxes[i - 1][d].start for i in ids) - 1, 0),
                             max(boxes[i - 1][d].stop for i in ids) + 1) for d in (0, 1))
        member = np.zeros(next_id, dtype=bool)  # the window may hold pieces an earlier band cut (ids > n_labels)
        member[ids] = True
        view = out[window]  # a view: the cuts are written into ``out``
        region_labels = np.pad(np.where(member[view], view, 0), 1)  # the margin, also at the image border
        region = region_labels > 0
        squared = squared_distance(region)
        markers, n = ndimage.label(morphology.local_maxima(dome_order(squared, h)[0], connectivity=2) & region,
                                   structure=EIGHT)
        if n < 2:
            continue
        per_region, new_id, next_id = piece_ids(markers, n, region_labels, n_labels, next_id)
        if new_id is None:
            continue
        cut = (per_region >= 2)[region_labels]
        # The watershed in the box of the regions it cuts, on -d^2 rather than -d: it only compares
        # and copies values, and the markers keep their raster order, so the pieces are the same.
        used = np.flatnonzero(cut.any(axis=1)), np.flatnonzero(cut.any(axis=0))
        box = tuple(slice(u[0] - 1, u[-1] + 2) for u in used)  # the frame keeps a background margin
        inside = cut[box]
        pieces = np.zeros(cut.shape, dtype=np.int32)
        pieces[box] = segmentation.watershed(-squared[box].astype(np.float64), np.where(inside, markers[box], 0),
                                             mask=inside, watershed_line=True)
        inner = cut[1:-1, 1:-1]
        view[inner] = new_id[pieces[1:-1, 1:-1][inner]]  # the watershed line (piece 0) becomes background
    return raster_order(out) if next_id > n_labels + 1 else out


def piece_ids(markers: np.ndarray, n: int, region_labels: np.ndarray, n_labels: int, next_id: int):
    """The ids of the pieces a watershed from ``markers`` (1..n) will cut: ``(markers per region,
    id of each marker's piece or None when no region has two, the next free id)``.

    The first marker of a region keeps the region's id, the others take new ids from ``next_id``;
    markers of regions with one marker get 0 (their region is not cut).
    """
    peaks = markers > 0
    owner = np.zeros(n + 1, dtype=np.int64)
    owner[markers[peaks]] = region_labels[peaks]  # a marker lies inside one region
    per_region = np.bincount(owner[1:], minlength=n_labels + 1)
    if not (per_region >= 2).any():
        return per_region, None, next_id
    new_id = np.zeros(n + 1, dtype=np.int32)
    keeps = np.zeros(n_labels + 1, dtype=bool)
    for m in range(1, n + 1):
        label = int(owner[m])
        if per_region[label] < 2:
            continue
        if not keeps[label]:
            new_id[m], keeps[label] = label, True
        else:
            new_id[m], next_id = next_id, next_id + 1
    return per_region, new_id, next_id


def raster_order(labels: np.ndarray, rows: int = 1024) -> np.ndarray:
    """``labels`` renumbered 1..n in raster order of each label's first pixel (deepliif's order), strip by strip.

    A label's first pixel lies in the top row of its box (``find_objects``): only the pixels in
    their own label's top row are looked at, so no sort of the whole image is needed.
    """
    n = int(labels.max(initial=0))
    height, width = labels.shape
    top = np.array([-1] + [b[0].start if b is not None else -1 for b in ndimage.find_objects(labels, max_label=n)])
    first = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
    for start in range(0, height, rows):
        flat = labels[start:start + rows].ravel()
        where = np.flatnonzero(flat)
        ids = flat[where]
        on_top = where // width + start == top[ids]
        ids, index = np.unique(ids[on_top], return_index=True)  # ascending positions: the first per label
        first[ids] = np.minimum(first[ids], where[on_top][index] + start * width)
    present = np.nonzero(first[1:] < np.iinfo(np.int64).max)[0] + 1
    lookup = np.zeros(n + 1, dtype=np.int32)
    lookup[present[np.argsort(first[present], kind="stable")]] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[labels]
