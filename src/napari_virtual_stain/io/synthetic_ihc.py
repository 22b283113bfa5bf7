"""Synthetic IHC (Ki67, hematoxylin + DAB) with its DeepLIIF modalities.

Brightfield IHC follows the Beer-Lambert law: each stain k absorbs light with an optical
density OD_k (decadic) spread over the colour channels by its normalised *stain vector*
v_k, and the transmitted colour is ``RGB = I0 * 10 ** -(sum_k OD_k * v_k)``. The stain
vectors are those of Ruifrok & Johnston (Anal. Quant. Cytol. Histol. 23:291, 2001), the
ones colour deconvolution (and scikit-image's ``rgb2hed``) uses:

    hematoxylin (0.650, 0.704, 0.286)   absorbs red and green most: nuclei look blue
    DAB         (0.268, 0.570, 0.776)   absorbs blue and green most: looks brown

Every nucleus takes up hematoxylin; Ki67-positive nuclei (about 30%) also carry DAB,
which partly hides their hematoxylin. The co-registered "mpIF" modalities DeepLIIF
learns from are made from the same nuclei: DAPI (all nuclei), Lap2 (the nuclear
envelope, a ring) and the marker (Ki67, positive nuclei only).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .synthetic_geometry import random_blob, rasterize, scatter_centers, smooth_noise

STAIN_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
STAIN_DAB = np.array([0.268, 0.570, 0.776], np.float32)
WHITE = 242.0  # the scanner's white level (I0), out of 255

NEGATIVE, POSITIVE = 1, 2  # values of the "classes" map (0 = background)


def _fluorescence(rng, signal: np.ndarray, sigma: float, photons: float = 400.0) -> np.ndarray:
    """Blurred, noisy fluorescence in [0, 1] (``signal`` about 0..1)."""
    blurred = ndimage.gaussian_filter(signal.astype(np.float32), sigma) + 0.01
    noisy = rng.poisson(np.clip(blurred, 0, None) * photons) / photons
    return np.clip(noisy, 0, 1).astype(np.float32)


def make_ihc(shape: tuple[int, int] = (512, 512), seed: int = 0, positive_fraction: float = 0.3,
             n_nuclei: int | None = None) -> dict:
    """An IHC-like field (Ki67 DAB + hematoxylin) and its DeepLIIF modalities.

    Returns ``rgb`` (Y, X, 3) uint8; float32 (Y, X) images in [0, 1]: ``hematoxylin``
    (hematoxylin amount, OD / 1.2), ``dapi``, ``lap2``, ``marker``; the true optical
    densities ``od_hematoxylin`` and ``od_dab`` (float32, decadic); ``labels`` (int32
    nucleus instances 1..n), ``classes`` (uint8 map: 0 background, 1 negative nucleus,
    2 positive nucleus) and ``positive`` (bool per label, index 0 = background).
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    radius = 9.0
    tissue = 0.5 + 0.5 * np.tanh(1.5 * smooth_noise(rng, shape, 40.0) + 0.8)  # denser and sparser areas
    if n_nuclei is None:
        n_nuclei = int(0.15 * shape[0] * shape[1] / (np.pi * radius**2))
    centers = scatter_centers(rng, shape, n_nuclei, min_distance=1.6 * radius, margin=-radius, weight=tissue)
    blobs = [random_blob(rng, c, radius * rng.uniform(0.7, 1.2), elongation=rng.choice([0.4, 2.0], p=[0.75, 0.25]),
                         roughness=0.06) for c in centers]
    labels, rho = rasterize(blobs, shape)
    n = len(blobs)
    present = np.zeros(n + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    lookup = np.cumsum(present).astype(np.int32) * present  # renumber 1..n without gaps
    labels = lookup[labels]
    n = int(labels.max())

    positive = np.concatenate([[False], rng.uniform(size=n) < positive_fraction])
    inside = labels > 0
    dome = np.sqrt(np.clip(1 - rho**2, 0, 1))
    chromatin = 1.0 + 0.3 * smooth_noise(rng, shape, 1.2)
    granules = 1.0 + 0.5 * smooth_noise(rng, shape, 0.8)

    h_amount = np.concatenate([[0.0], rng.uniform(0.35, 0.7, n)]).astype(np.float32)
    h_amount[positive] *= 0.5  # DAB hides part of the hematoxylin
    stroma = np.clip(0.06 + 0.05 * smooth_noise(rng, shape, 3.0), 0, None) * tissue
    od_h = np.where(inside, h_amount[labels] * (0.75 + 0.25 * dome) * chromatin, stroma).astype(np.float32)
    dab_amount = np.concatenate([[0.0], rng.uniform(0.3, 0.9, n)]).astype(np.float32) * positive
    od_dab = (dab_amount[labels] * (0.7 + 0.3 * dome) * np.clip(granules, 0.2, None)).astype(np.float32)
    od_dab += 0.01 * tissue  # a little non-specific background
    od_h = np.clip(ndimage.gaussian_filter(od_h, 0.7), 0, None)
    od_dab = np.clip(ndimage.gaussian_filter(od_dab, 0.7), 0, None)

    od = od_h[..., None] * STAIN_HEMATOXYLIN + od_dab[..., None] * STAIN_DAB
    rgb = WHITE * 10.0 ** (-od) + rng.normal(0.0, 1.5, od.shape)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    # Ki67-positive cells are cycling: more of them have doubled their DNA (G2).
    g2 = rng.uniform(size=n) < np.where(positive[1:], 0.4, 0.05)
    dna = np.concatenate([[0.0], np.where(g2, 1.0, 0.6) * rng.uniform(0.85, 1.1, n)])
    dapi = _fluorescence(rng, dna[labels] * (0.6 + 0.4 * dome) * chromatin * inside, 1.0)
    envelope = inside & (rho > 0.72)
    lap2 = _fluorescence(rng, np.where(envelope, 0.9, 0.15 * inside), 1.0)
    ki67 = np.concatenate([[0.0], rng.uniform(0.5, 1.0, n)]) * positive
    marker = _fluorescence(rng, ki67[labels] * np.clip(granules, 0.2, None) * 0.8, 1.0)

    classes = np.where(inside, np.where(positive[labels], POSITIVE, NEGATIVE), 0).astype(np.uint8)
    return {
        "rgb": rgb,
        "hematoxylin": np.clip(od_h / 1.2, 0, 1).astype(np.float32),
        "dapi": dapi,
        "lap2": lap2,
        "marker": marker,
        "od_hematoxylin": od_h,
        "od_dab": od_dab,
        "labels": labels,
        "classes": classes,
        "positive": positive,
    }


def unmix_od(rgb: np.ndarray, white: float = WHITE) -> tuple[np.ndarray, np.ndarray]:
    """Colour deconvolution: hematoxylin and DAB optical densities of an RGB image.

    Least-squares inverse of the Beer-Lambert model with the Ruifrok & Johnston vectors
    (plus their orthogonal residual vector).
    """
    od = -np.log10(np.clip(rgb.astype(np.float32), 1, None) / white)
    residual = np.cross(STAIN_HEMATOXYLIN, STAIN_DAB)
    matrix = np.stack([STAIN_HEMATOXYLIN, STAIN_DAB, residual / np.linalg.norm(residual)])
    amounts = od @ np.linalg.inv(matrix)
    return amounts[..., 0].astype(np.float32), amounts[..., 1].astype(np.float32)
