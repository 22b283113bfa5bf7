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
cell's first pixel). Official release folders and maps a user brought never get a split:
their cards carry no ``split`` value (see ``deepliif_cells.model_thresholds``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import morphology, segmentation

EIGHT = np.ones((3, 3), dtype=bool)
BAND_ROWS = 512  # regions starting in these rows are split in one window (a 512 x 512 view: one; memory about 40 bytes per pixel of it)


def dome_markers(region: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(distance transform, marker labels, how many) of a boolean cell mask (background around it).

    The markers are the maxima of the reconstruction of (distance - h) under the distance: one
    per dome at least ``h`` deep. Not skimage's ``h_maxima``, which also keeps every *global*
    maximum, so two equal peaks (common: the distances are square roots of integers) would
    always be cut, whatever ``h``.
    """
    distance = ndimage.distance_transform_edt(region)
    domes = morphology.reconstruction(distance - h, distance, method="dilation")
    markers, n = ndimage.label(morphology.local_maxima(domes, connectivity=2) & region, structure=EIGHT)
    return distance, markers, n


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
        distance, markers, n = dome_markers(region, h)
        if n < 2:
            continue
        peaks = markers > 0
        owner = np.zeros(n + 1, dtype=np.int64)
        owner[markers[peaks]] = region_labels[peaks]  # a marker lies inside one region
        per_region = np.bincount(owner[1:], minlength=n_labels + 1)
        cut_ids = np.nonzero(per_region >= 2)[0]
        if cut_ids.size == 0:
            continue
        # the first marker of a region keeps the region's id, the others take new ids
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
        cut = np.isin(region_labels, cut_ids)
        pieces = segmentation.watershed(-distance, np.where(cut, markers, 0), mask=cut, watershed_line=True)
        inner = cut[1:-1, 1:-1]
        view[inner] = new_id[pieces[1:-1, 1:-1][inner]]  # the watershed line (piece 0) becomes background
    return raster_order(out) if next_id > n_labels + 1 else out


def raster_order(labels: np.ndarray, rows: int = 1024) -> np.ndarray:
    """``labels`` renumbered 1..n in raster order of each label's first pixel (deepliif's order), strip by strip."""
    n = int(labels.max(initial=0))
    width = labels.shape[1]
    first = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
    for start in range(0, labels.shape[0], rows):
        ids, index = np.unique(labels[start:start + rows].ravel(), return_index=True)
        first[ids] = np.minimum(first[ids], index + start * width)
    present = np.nonzero(first[1:] < np.iinfo(np.int64).max)[0] + 1
    lookup = np.zeros(n + 1, dtype=np.int32)
    lookup[present[np.argsort(first[present], kind="stable")]] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[labels]
