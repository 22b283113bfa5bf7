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

Every region is handled in its own bounding box, so memory stays that of the label image
whatever the image size, and the split cells keep deepliif's order (raster order of each
cell's first pixel). Official release folders and maps a user brought never get a split:
their cards carry no ``split`` value (see ``deepliif_cells.model_thresholds``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import morphology, segmentation

EIGHT = np.ones((3, 3), dtype=bool)


def _pieces(region: np.ndarray, h: int) -> tuple[np.ndarray, int]:
    """(labels of ``region``'s pieces, how many) for one region's boolean box, padded by one pixel."""
    distance = ndimage.distance_transform_edt(region)
    # The maxima of the reconstruction of (distance - h) under the distance: one per dome at least
    # h deep. Not skimage's h_maxima, which also keeps every *global* maximum, so two equal peaks
    # (common: the distances are square roots of integers) would always split, whatever h.
    domes = morphology.reconstruction(distance - h, distance, method="dilation")
    markers, n = ndimage.label(morphology.local_maxima(domes, connectivity=2) & region, structure=EIGHT)
    if n < 2:
        return region.astype(np.int32), 1
    return segmentation.watershed(-distance, markers, mask=region, watershed_line=True).astype(np.int32), n


def split_regions(labels: np.ndarray, h: int) -> np.ndarray:
    """``labels`` (int32, 0 = background, regions 8-connected) with touching nuclei split (see the module).

    ``h``: the h-maxima depth in pixels (1 or more). Returns new labels numbered in raster order
    of each cell's first pixel; ``labels`` itself is not changed.
    """
    h = int(h)
    if h < 1:
        raise ValueError(f"the split depth must be 1 pixel or more, not {h}")
    out = np.array(labels, dtype=np.int32, copy=True)
    smallest = 2 * (h + 1) ** 2  # two discs of radius h + 1 at least: a smaller region has one peak or none
    areas = np.bincount(out.ravel())
    next_id = int(out.max(initial=0)) + 1
    changed = False
    for label, box in enumerate(ndimage.find_objects(out), start=1):
        if box is None or areas[label] < smallest:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)  # a background margin for the EDT
        window = out[grown]
        region = np.pad(window == label, 1)  # the margin, also at the image border (outside is not cell)
        pieces, n = _pieces(region, h)
        if n < 2:
            continue
        pieces = pieces[1:-1, 1:-1]
        inside = window == label
        window[inside] = 0  # the watershed line becomes background
        cut = inside & (pieces > 0)
        window[cut] = np.where(pieces[cut] == 1, label, next_id + pieces[cut] - 2)
        next_id += n - 1
        changed = True
    return raster_order(out) if changed else out


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
