"""Cell shapes for the synthetic data: irregular 2D blobs and 3D ellipsoids, and their labels.

A cell is an ellipse (ellipsoid in 3D) whose radius is perturbed by a few low angular
harmonics, so outlines are irregular but smooth. Every pixel gets a *normalised radius*
``rho`` for a shape (0 at its centre, 1 on its outline); rasterising many shapes gives a
pixel to the shape with the smallest ``rho``, so touching cells share a straight-ish border
(a power-diagram-like split) instead of overlapping. Nuclei are smaller shapes inside
their cell, clipped to it. Everything is driven by a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Blob:
    """One irregular ellipse (2D) or flattened ellipsoid (3D: ``half_height`` > 0)."""

    center: tuple[float, ...]  # (y, x) or (z, y, x), pixels
    semi_axes: tuple[float, float]  # in-plane (a, b), pixels
    angle: float  # in-plane rotation, radians
    harmonics: np.ndarray  # (k, 2): amplitude, phase of cos(k * phi + phase), k = 2, 3, ...
    half_height: float = 0.0  # 3D only: z semi-axis, pixels

    def radius_factor(self, phi: np.ndarray) -> np.ndarray:
        factor = np.ones_like(phi)
        for k, (amplitude, phase) in enumerate(self.harmonics, start=2):
            factor += amplitude * np.cos(k * phi + phase)
        return factor

    def extent(self) -> float:
        """Largest in-plane distance from the centre to the outline (for bounding boxes)."""
        return max(self.semi_axes) * (1.0 + float(np.abs(self.harmonics[:, 0]).sum()))

    def rho(self, coords: list[np.ndarray]) -> np.ndarray:
        """Normalised radius at the given (broadcastable) pixel coordinates."""
        dy, dx = coords[-2] - self.center[-2], coords[-1] - self.center[-1]
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = (c * dx + s * dy) / self.semi_axes[0], (-s * dx + c * dy) / self.semi_axes[1]
        r_plane = np.hypot(u, v) / self.radius_factor(np.arctan2(v, u))
        if len(coords) == 2:
            return r_plane
        dz = (coords[0] - self.center[0]) / self.half_height
        return np.sqrt(r_plane**2 + dz**2)


def random_blob(rng: np.random.Generator, center, radius: float, elongation: float = 0.25,
                roughness: float = 0.08, half_height: float = 0.0) -> Blob:
    """An irregular blob of mean in-plane ``radius`` (px) at ``center``."""
    stretch = 1.0 + rng.uniform(0.0, elongation)
    a, b = radius * np.sqrt(stretch), radius / np.sqrt(stretch)
    n_harmonics = 3
    amplitudes = roughness * rng.uniform(0.3, 1.0, n_harmonics) / np.arange(1, n_harmonics + 1)
    harmonics = np.stack([amplitudes, rng.uniform(0, 2 * np.pi, n_harmonics)], axis=1)
    return Blob(tuple(float(c) for c in center), (a, b), float(rng.uniform(0, np.pi)), harmonics,
                float(half_height))


def scatter_centers(rng: np.random.Generator, shape: tuple[int, int], n: int, min_distance: float,
                    margin: float = 0.0, weight: np.ndarray | None = None, max_tries: int = 30) -> np.ndarray:
    """Up to ``n`` (y, x) points at least ``min_distance`` apart (dart throwing).

    ``weight`` (an array of ``shape`` in [0, 1]) makes points likelier where it is high
    (tissue regions). ``margin`` may be negative (cells cut by the image edge). A grid of
    buckets one ``min_distance`` wide keeps each test to the 3x3 neighbouring buckets.
    """
    low = np.array([margin, margin], float)
    high = np.array(shape, float) - margin
    candidates = rng.uniform(low, high, size=(max(n, 1) * max_tries, 2))
    keep_draws = rng.uniform(size=len(candidates))
    cell = max(float(min_distance), 1e-6)
    buckets: dict[tuple[int, int], list[tuple[float, float]]] = {}
    points: list[tuple[float, float]] = []
    limit2 = min_distance**2
    for (py, px), draw in zip(candidates, keep_draws):
        if len(points) >= n:
            break
        if weight is not None:
            iy = min(max(int(py), 0), shape[0] - 1)
            ix = min(max(int(px), 0), shape[1] - 1)
            if draw > weight[iy, ix]:
                continue
        by, bx = int(py // cell), int(px // cell)
        if any((py - qy) ** 2 + (px - qx) ** 2 < limit2
               for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               for qy, qx in buckets.get((by + dy, bx + dx), ())):
            continue
        points.append((float(py), float(px)))
        buckets.setdefault((by, bx), []).append((float(py), float(px)))
    return np.asarray(points, float).reshape(-1, 2)


def rasterize(blobs: list[Blob], shape: tuple[int, ...], within: np.ndarray | None = None,
              labels_of: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label image and per-pixel normalised radius of ``blobs`` (label i + 1 for blob i).

    ``within``: an existing label image; blob i may only take pixels where it equals
    ``labels_of[i]`` (nuclei clipped to their cell). ``rho`` is 1 outside all blobs.
    """
    labels = np.zeros(shape, np.int32)
    rho = np.ones(shape, np.float32)
    for i, blob in enumerate(blobs):
        reach = blob.extent() + 1.0
        lo = [int(np.floor(blob.center[-2] - reach)), int(np.floor(blob.center[-1] - reach))]
        hi = [int(np.ceil(blob.center[-2] + reach)) + 1, int(np.ceil(blob.center[-1] + reach)) + 1]
        if len(shape) == 3:
            zr = blob.half_height + 1.0
            lo.insert(0, int(np.floor(blob.center[0] - zr)))
            hi.insert(0, int(np.ceil(blob.center[0] + zr)) + 1)
        lo = [max(0, v) for v in lo]
        hi = [min(s, v) for s, v in zip(shape, hi)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        coords = np.ogrid[box]
        r = blob.rho(list(coords)).astype(np.float32)
        take = (r < 1.0) & (r < rho[box])
        if within is not None:
            take &= within[box] == (labels_of[i] if labels_of is not None else i + 1)
        labels[box][take] = (labels_of[i] if labels_of is not None else i + 1)
        rho[box][take] = r[take]
    return labels, rho


def nucleus_inside(rng: np.random.Generator, cell: Blob, size: tuple[float, float] = (0.38, 0.55),
                   offset: float = 0.2, height: float = 0.75) -> Blob:
    """A nucleus for ``cell``: a smaller, smoother blob a little off the cell's centre."""
    radius = float(np.sqrt(cell.semi_axes[0] * cell.semi_axes[1])) * rng.uniform(*size)
    shift = rng.normal(0.0, offset * radius, 2)
    center = list(cell.center)
    center[-2] += shift[0]
    center[-1] += shift[1]
    return random_blob(rng, center, radius, elongation=0.3, roughness=0.04,
                       half_height=cell.half_height * height if cell.half_height else 0.0)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose label differs from one of their face neighbours (inside cells only)."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        a = np.swapaxes(labels, 0, axis)
        e = np.swapaxes(edge, 0, axis)
        differs = a[1:] != a[:-1]
        e[1:] |= differs
        e[:-1] |= differs
    return edge & (labels > 0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32 texture).

    Very smooth fields (sigma > 8 px) are made on a coarser grid and interpolated: the
    same look, a fraction of the cost of a wide Gaussian kernel.
    """
    sigmas = np.broadcast_to(np.asarray(sigma, float), (len(shape),))
    factor = max(1, int(sigmas.min() // 4)) if sigmas.min() > 8 else 1
    coarse = tuple(max(2, -(-n // factor)) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigmas / factor, mode="wrap")
    if factor > 1:
        field = ndimage.zoom(field, [n / c for n, c in zip(shape, coarse)], order=1, mode="nearest")
        field = field[tuple(slice(0, n) for n in shape)]
    std = float(field.std())
    return field / std if std > 0 else field
