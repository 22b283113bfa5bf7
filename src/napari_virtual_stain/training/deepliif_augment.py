"""Augmentations that teach a DeepLIIF network what a nucleus looks like across labs and scanners.

Two training images cannot show every stain intensity, so the IHC side of each crop is
re-stained in optical-density space, as colour deconvolution models brightfield light
(Beer-Lambert): the crop is unmixed into hematoxylin, eosin/residual and DAB amounts with
scikit-image's stain matrix, each amount is scaled (pale to dark counterstain, weak to
strong DAB), the stain vectors themselves are tilted a little (another lab's hematoxylin
is another blue), and the crop is recombined. Then brightness, contrast and gamma, a
defocus blur, sensor noise and JPEG compression, as scanners and file formats add them.

Only the IHC input changes: the targets (the mpIF modalities and the classified mask) say
what is in the tissue, which a different stain does not change. Geometric changes (scale,
flips, 90-degree turns) apply to input and targets alike and live with the cropping.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import color


@dataclass(frozen=True)
class StainJitter:
    """Ranges of the random changes; each drawn uniformly (scales log-uniformly)."""

    hematoxylin_scale: tuple[float, float] = (0.35, 2.0)
    dab_scale: tuple[float, float] = (0.35, 2.0)
    residual_scale: tuple[float, float] = (0.5, 1.5)
    vector_tilt: float = 0.08  # per stain-vector component, before renormalising
    brightness: float = 0.08  # added, on 0-1 intensities
    contrast: tuple[float, float] = (0.75, 1.3)
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_sigma: tuple[float, float] = (0.0, 0.03)
    jpeg_probability: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 95)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Decadic optical density of 8-bit brightfield RGB (white = 255).

    Not ``skimage.color.rgb2hed``: it clips negative stain amounts to zero, so re-staining
    through it would change every pixel even with no jitter at all.
    """
    return -np.log10(np.maximum(np.asarray(rgb, np.float64), 1.0) / 255.0)


def tilted_stain_matrix(rng: np.random.Generator, tilt: float) -> np.ndarray:
    """scikit-image's ``rgb_from_hed`` with every stain vector perturbed and renormalised."""
    matrix = color.rgb_from_hed + rng.uniform(-tilt, tilt, color.rgb_from_hed.shape)
    matrix = np.clip(matrix, 1e-3, None)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def restain(rgb: np.ndarray, rng: np.random.Generator, jitter: StainJitter = StainJitter()) -> np.ndarray:
    """A re-stained copy of an (Y, X, 3) uint8 IHC crop (the input is not changed)."""
    hed = optical_density(rgb) @ color.hed_from_rgb  # stain amounts, negatives kept (exact inverse below)
    hed[..., 0] *= _log_uniform(rng, jitter.hematoxylin_scale)
    hed[..., 1] *= _log_uniform(rng, jitter.residual_scale)
    hed[..., 2] *= _log_uniform(rng, jitter.dab_scale)
    matrix = tilted_stain_matrix(rng, jitter.vector_tilt)
    out = 10.0 ** -(hed @ matrix)  # transmitted light, 0-1
    out = (out - 0.5) * rng.uniform(*jitter.contrast) + 0.5 + rng.uniform(-jitter.brightness, jitter.brightness)
    out = np.clip(out, 0, 1) ** rng.uniform(*jitter.gamma)
    if rng.uniform() < jitter.blur_probability:
        sigma = rng.uniform(*jitter.blur_sigma)
        out = ndimage.gaussian_filter(out, (sigma, sigma, 0))
    out = out + rng.normal(0.0, rng.uniform(*jitter.noise_sigma), out.shape)
    out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if rng.uniform() < jitter.jpeg_probability:
        out = jpeg_roundtrip(out, int(rng.integers(jitter.jpeg_quality[0], jitter.jpeg_quality[1] + 1)))
    return out


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """``rgb`` compressed as a JPEG of this quality and decoded again (compression artefacts)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))
