"""Synthetic multiplexed ion-beam / imaging-mass-cytometry-like tissue (MIBI, IMC).

A tissue of tightly packed cells (a Voronoi tessellation of cell centres, with gaps of
extracellular matrix) in which each cell has a type, and each type a marker profile with
the relationships real panels show:

* DAPI and Histone H3 stain every nucleus, in proportion to its DNA (cycling cells,
  Ki67-positive, more often have doubled DNA): the two are strongly correlated.
* CD45 marks the membrane of every immune cell; CD3 (T cells) and CD20 (B cells) are
  disjoint subsets of the CD45-positive cells.
* PanCK fills the cytoplasm of epithelial cells, which live in islands and are never
  CD45-positive: PanCK and CD45 are anti-correlated.
* Ki67 marks the nuclei of a subset of cells (mostly epithelial and B cells).
* Vimentin fills stromal cells (and weakly immune cells); SMA half of the stromal cells.

Pixel values are ion counts: Poisson samples of low expected rates, so most pixels of
most channels are 0, as in real MIBI data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .synthetic_geometry import boundaries, random_blob, rasterize, scatter_centers, smooth_noise

CHANNELS = ["DAPI", "Histone H3", "CD45", "CD3", "CD20", "PanCK", "Ki67", "Vimentin", "SMA"]
CELL_TYPES = ["background", "epithelial", "T cell", "B cell", "myeloid", "stromal"]
EPITHELIAL, T_CELL, B_CELL, MYELOID, STROMAL = 1, 2, 3, 4, 5
COMPARTMENT = {"DAPI": "nucleus", "Histone H3": "nucleus", "Ki67": "nucleus", "CD45": "membrane",
               "CD3": "membrane", "CD20": "membrane", "PanCK": "cytoplasm", "Vimentin": "cytoplasm",
               "SMA": "cytoplasm"}
BACKGROUND_RATE = 0.03  # counts per pixel everywhere (detector background)


def _tessellate(rng, shape, radius):
    """Cell labels (Voronoi cells of scattered centres, limited to 1.3 radii) and the centres."""
    n = int(0.85 * shape[0] * shape[1] / (np.pi * radius**2))
    centers = scatter_centers(rng, shape, n, min_distance=1.5 * radius, margin=-0.5 * radius)
    seeds = np.ones(shape, bool)
    iy = np.clip(np.rint(centers[:, 0]).astype(int), 0, shape[0] - 1)
    ix = np.clip(np.rint(centers[:, 1]).astype(int), 0, shape[1] - 1)
    seeds[iy, ix] = False
    ids = np.zeros(shape, np.int32)
    ids[iy, ix] = np.arange(1, len(centers) + 1)
    distance, (ny, nx) = ndimage.distance_transform_edt(seeds, return_indices=True)
    # a wobbly reach: cells are not perfect polygons, and gaps of matrix open between some
    reach = 1.3 * radius * (1.0 + 0.15 * smooth_noise(rng, shape, 4.0))
    labels = np.where(distance < reach, ids[ny, nx], 0).astype(np.int32)
    return labels, centers


def _assign_types(rng, centers, shape) -> np.ndarray:
    """Cell type per cell (index 0 = background) from where it sits in the tissue."""
    epithelium = smooth_noise(rng, shape, 45.0) > 0.35  # islands, about a third of the area
    aggregate = smooth_noise(rng, shape, 30.0)  # where B cells gather
    types = [0]
    for y, x in centers:
        iy, ix = int(np.clip(y, 0, shape[0] - 1)), int(np.clip(x, 0, shape[1] - 1))
        if epithelium[iy, ix]:
            p = {EPITHELIAL: 0.92, T_CELL: 0.05, MYELOID: 0.03}
        else:
            b = 0.15 * (1.0 + 1.5 * max(aggregate[iy, ix], 0.0))
            p = {STROMAL: 0.45, T_CELL: 0.25, B_CELL: b, MYELOID: 0.15}
        kinds, weights = list(p), np.array(list(p.values()))
        types.append(kinds[rng.choice(len(kinds), p=weights / weights.sum())])
    return np.asarray(types, np.int32)


def _expression(rng, types: np.ndarray) -> np.ndarray:
    """Mean count rate per pixel of each marker in its compartment, per cell: (n + 1, C)."""
    n = len(types)
    immune = np.isin(types, [T_CELL, B_CELL, MYELOID])
    ki67_rate = np.select([types == EPITHELIAL, types == B_CELL, types == T_CELL], [0.3, 0.2, 0.1], 0.05)
    cycling = rng.uniform(size=n) < ki67_rate
    dna = np.where(cycling & (rng.uniform(size=n) < 0.5), 2.0, 1.0) * rng.lognormal(0.0, 0.1, n)

    def level(mean, mask, spread=0.3):
        return np.where(mask, mean * rng.lognormal(0.0, spread, n), 0.0)

    columns = {
        "DAPI": 3.0 * dna * rng.lognormal(0.0, 0.08, n),
        "Histone H3": 2.0 * dna * rng.lognormal(0.0, 0.08, n),
        "CD45": level(2.0, immune),
        "CD3": level(1.5, types == T_CELL),
        "CD20": level(1.5, types == B_CELL),
        "PanCK": level(2.5, types == EPITHELIAL),
        "Ki67": level(2.0, cycling),
        "Vimentin": level(1.5, types == STROMAL) + level(0.3, immune),
        "SMA": level(1.5, (types == STROMAL) & (rng.uniform(size=n) < 0.5)),
    }
    table = np.stack([columns[c] for c in CHANNELS], axis=1).astype(np.float32)
    table[0] = 0.0  # background is no cell
    return table


def make_multiplex(shape: tuple[int, int] = (512, 512), seed: int = 0, cell_radius_px: float = 9.0) -> dict:
    """A multiplexed tissue image of ion counts with known cell types.

    Returns ``image`` (C, Y, X) float32 counts (integers >= 0, mostly 0), ``channel_names``
    (:data:`CHANNELS`), ``rates`` (C, Y, X) float32 expected counts (noise-free truth),
    ``labels`` and ``nuclei_labels`` (int32, a nucleus has its cell's label),
    ``cell_types`` (int32 per label, index 0 = background; names in ``cell_type_names``)
    and ``expression`` ((n + 1, C) float32 mean rate of each marker per cell).
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    labels, centers = _tessellate(rng, shape, cell_radius_px)
    blobs = [random_blob(rng, c, cell_radius_px * rng.uniform(0.4, 0.55), elongation=0.4, roughness=0.05)
             for c in centers]
    nuclei, _ = rasterize(blobs, shape, within=labels, labels_of=list(range(1, len(centers) + 1)))
    types = _assign_types(rng, centers, shape)
    table = _expression(rng, types)

    cell = labels > 0
    compartments = {
        "nucleus": (nuclei > 0).astype(np.float32),
        "membrane": (ndimage.binary_dilation(boundaries(labels)) & cell).astype(np.float32),
        "cytoplasm": (cell & (nuclei == 0)).astype(np.float32),
    }
    chromatin = np.clip(1.0 + 0.3 * smooth_noise(rng, shape, 1.0), 0.2, None)
    rates = np.empty((len(CHANNELS),) + shape, np.float32)
    for c, name in enumerate(CHANNELS):
        compartment = COMPARTMENT[name]
        rate = table[labels, c] * compartments[compartment]
        if compartment == "nucleus":
            rate = rate * chromatin
        rates[c] = ndimage.gaussian_filter(rate, 0.7) + BACKGROUND_RATE
    image = rng.poisson(rates).astype(np.float32)
    return {
        "image": image,
        "channel_names": list(CHANNELS),
        "rates": rates,
        "labels": labels,
        "nuclei_labels": nuclei,
        "cell_types": types,
        "cell_type_names": list(CELL_TYPES),
        "expression": table,
    }
