"""Augmentations that teach a label-free -> stain network to read any microscope's optics.

A brightfield, phase-contrast or transmitted-light image of the same cells changes with the
microscope in ways the stain does not: the polarity of the contrast (above or below focus,
positive or negative phase contrast), the camera's response curve, the amount of defocus,
phase halos, noise, uneven illumination and the pixel size. Each training crop of the
normalised label-free input gets a random mix of those; the target is left alone (the
nuclei are where they are), except for the scale, which changes input and target alike
(:func:`scaled_crop`).

A global gain or offset is not drawn: the per-image percentile normalisation (the model
card's input normalisation) removes it before the network sees the image, at training and
prediction time alike. The changes here are the non-linear ones that normalisation cannot
undo. They act on inputs already normalised to about [0, 1] and keep them there, so the
numbers match what the Predictor gives the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


@dataclass(frozen=True)
class LabelFreeJitter:
    """Ranges of the random changes; each drawn uniformly (gamma log-uniformly)."""

    invert_probability: float = 0.5  # contrast inversion: brightfield/phase polarity
    gamma: tuple[float, float] = (0.6, 1.7)  # camera response
    halo_probability: float = 0.3  # phase-contrast-like halos: the image plus its high-pass
    halo_strength: tuple[float, float] = (0.3, 1.5)
    halo_sigma: tuple[float, float] = (2.0, 8.0)
    blur_probability: float = 0.4  # defocus
    blur_sigma: tuple[float, float] = (0.5, 2.5)
    shading_probability: float = 0.3  # uneven illumination: a tilt across the crop
    shading_strength: float = 0.3
    noise_sigma: tuple[float, float] = (0.0, 0.06)  # on 0-1 intensities


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def jitter_label_free(x: np.ndarray, rng: np.random.Generator, jitter: LabelFreeJitter = LabelFreeJitter()
                      ) -> np.ndarray:
    """A jittered copy of a normalised label-free crop (C, Y, X) (the input is not changed)."""
    out = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    if rng.uniform() < jitter.invert_probability:
        out = 1.0 - out
    out = out ** _log_uniform(rng, jitter.gamma)
    if rng.uniform() < jitter.halo_probability:
        sigma = rng.uniform(*jitter.halo_sigma)
        low = ndimage.gaussian_filter(out, (0, sigma, sigma))
        out = np.clip(out + rng.uniform(*jitter.halo_strength) * (out - low), 0.0, 1.0)
    if rng.uniform() < jitter.blur_probability:
        sigma = rng.uniform(*jitter.blur_sigma)
        out = ndimage.gaussian_filter(out, (0, sigma, sigma))
    if rng.uniform() < jitter.shading_probability:
        h, w = out.shape[-2:]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * np.linspace(-0.5, 0.5, h)[:, None] + np.sin(angle) * np.linspace(-0.5, 0.5, w)[None])
        out = out * (1.0 + rng.uniform(0, jitter.shading_strength) * ramp)
    out = out + rng.normal(0.0, rng.uniform(*jitter.noise_sigma), out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def scaled_crop(x: np.ndarray, y: np.ndarray, mask: np.ndarray, patch: tuple[int, int], scale: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random crop of (C, Y, X) arrays resampled to ``patch``, ``scale`` output pixels per source pixel.

    The source window is ``patch / scale`` pixels (capped by the image, so a small image
    gives a smaller zoom-out); input and target are resampled bilinearly (with
    anti-aliasing when shrinking), the mask by nearest neighbour.
    """
    size = [int(np.clip(round(p / scale), 8, s)) for p, s in zip(patch, x.shape[-2:])]
    corner = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape[-2:], size)]
    box = (slice(None), slice(corner[0], corner[0] + size[0]), slice(corner[1], corner[1] + size[1]))
    parts = [np.asarray(a[box], np.float32) for a in (x, y, mask)]
    if list(size) == list(patch):
        return tuple(parts)
    shrink = size[0] > patch[0]
    xy = torch.from_numpy(np.concatenate(parts[:2]))[None]
    xy = F.interpolate(xy, size=tuple(patch), mode="bilinear", align_corners=False, antialias=shrink)[0].numpy()
    m = F.interpolate(torch.from_numpy(parts[2])[None], size=tuple(patch), mode="nearest")[0].numpy()
    n = parts[0].shape[0]
    return xy[:n], xy[n:], m
