"""Image formation for the synthetic cells: a transmitted-light microscope and a camera.

Label-free (brightfield) images come from wave optics, not from a drawing rule: the cells
are a refractive-index map (nuclei denser than cytoplasm, nucleoli denser still) that
delays a plane wave; the wave is propagated (angular spectrum method, multi-slice for
3D objects) to the plane the objective is focused on, filtered by the objective pupil
(NA), and its intensity recorded. An in-focus phase object is nearly invisible; defocus
turns the phase curvature into intensity contrast whose sign flips with the sign of the
defocus (transport of intensity), which is what real brightfield focal series show.
Partial coherence of the condenser blurs that contrast in proportion to the defocus.
Fluorescence is the dye concentration blurred by a Gaussian PSF. Both are recorded by a
camera with uneven illumination, shot (Poisson) and read (Gaussian) noise, and a gamma.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import fft as sfft
from scipy import ndimage


@dataclass(frozen=True)
class Microscope:
    """How the synthetic sample is imaged (the defaults: a 20x/0.45 widefield set-up).

    defocus_um: 2D brightfield: distance of the focal plane from the cells' mid-plane
        (positive = focused above them). Positive and negative give opposite contrast.
    focus_offset_um: 3D focal series: shift of every plane's focus relative to the cells
        (0 = the middle plane of the stack is focused on the cells' mid-plane).
    contrast: scale of the specimen's optical path and absorption (mounting medium,
        staining-free sample thickness); 1 is a typical cultured cell in medium.
    noise_level: relative shot noise of the brightfield background (0.02 = 2500 photons);
        fluorescence gets 5x fewer photons at its brightest. Read noise is a third of it.
    illumination_gradient: strength of the uneven illumination (a tilt plus vignetting).
    gamma: camera response exponent applied to the normalised signal.
    background: brightfield background level in the normalised [0, 1] output.
    """

    defocus_um: float = 2.0
    focus_offset_um: float = 0.0
    contrast: float = 1.0
    noise_level: float = 0.02
    illumination_gradient: float = 0.15
    gamma: float = 1.0
    background: float = 0.6
    pixel_size_um: float = 0.65
    z_step_um: float = 1.0
    wavelength_um: float = 0.55
    na: float = 0.45
    condenser_na: float = 0.2
    medium_index: float = 1.335
    fluorescence_wavelength_um: float = 0.52

    @classmethod
    def different(cls) -> "Microscope":
        """A visibly different microscope (for domain-shift and fine-tuning benchmarks).

        Focused on the other side of the cells (the phase contrast inverts), lower
        specimen contrast, 2.5x the noise, stronger uneven illumination and a
        non-linear camera.
        """
        return replace(cls(), defocus_um=-3.0, focus_offset_um=1.5, contrast=0.7, noise_level=0.05,
                       illumination_gradient=0.4, gamma=0.7, background=0.5)


# --------------------------------------------------------------------------- wave optics


def _frequencies(shape: tuple[int, int], pixel_um: float) -> np.ndarray:
    fy = sfft.fftfreq(shape[0], d=pixel_um)[:, None]
    fx = sfft.fftfreq(shape[1], d=pixel_um)[None, :]
    return (fy**2 + fx**2).astype(np.float32)


def propagator(shape: tuple[int, int], mic: Microscope, distance_um: float) -> np.ndarray:
    """Angular-spectrum transfer function for ``distance_um`` (evanescent waves dropped)."""
    f2 = _frequencies(shape, mic.pixel_size_um)
    k_medium = (mic.medium_index / mic.wavelength_um) ** 2
    kz = np.sqrt(np.maximum(k_medium - f2, 0.0))
    # relative to the plane wave (drop the constant phase), so the background stays flat
    phase = 2 * np.pi * distance_um * (kz - np.sqrt(k_medium))
    return np.where(f2 < k_medium, np.exp(1j * phase), 0).astype(np.complex64)


def pupil(shape: tuple[int, int], mic: Microscope) -> np.ndarray:
    """Objective pupil: passes spatial frequencies up to NA / wavelength (soft edge)."""
    f = np.sqrt(_frequencies(shape, mic.pixel_size_um))
    cutoff = mic.na / mic.wavelength_um
    edge = 0.05 * cutoff
    return np.clip((cutoff - f) / edge + 0.5, 0.0, 1.0).astype(np.float32)


def specimen_field(phase: np.ndarray, absorption: np.ndarray) -> np.ndarray:
    """Complex transmission of a thin slice: amplitude exp(-absorption/2), phase ``phase``."""
    return (np.exp(-0.5 * absorption) * np.exp(1j * phase)).astype(np.complex64)


# Mirror padding (pixels) around the field before any FFT, so that cells cut by one edge of
# the image do not diffract into the opposite edge (the FFT is periodic, a lens is not).
PAD_PX = 16


def _pad(a: np.ndarray) -> np.ndarray:
    widths = [(0, 0)] * (a.ndim - 2) + [(PAD_PX, PAD_PX)] * 2
    return np.pad(a, widths, mode="reflect")


def _crop(a: np.ndarray) -> np.ndarray:
    return a[..., PAD_PX:-PAD_PX, PAD_PX:-PAD_PX]


def brightfield_thin(phase: np.ndarray, absorption: np.ndarray, mic: Microscope,
                     defocus_um: float) -> np.ndarray:
    """Intensity image of a thin specimen with the focal plane ``defocus_um`` away."""
    spectrum = sfft.fft2(specimen_field(_pad(phase), _pad(absorption)), workers=-1)
    shape = spectrum.shape
    transfer = propagator(shape, mic, defocus_um) * pupil(shape, mic)
    intensity = np.abs(sfft.ifft2(spectrum * transfer, workers=-1)) ** 2
    return _crop(_partial_coherence(intensity.astype(np.float32), mic, defocus_um))


def brightfield_focal_series(phase: np.ndarray, absorption: np.ndarray, mic: Microscope,
                             focus_um: np.ndarray, specimen_center_um: float) -> np.ndarray:
    """Focal series of a thick specimen by multi-slice (beam) propagation.

    ``phase`` and ``absorption`` are per-slice (Z, Y, X) with slice spacing ``z_step_um``;
    plane z of the result is focused at height ``focus_um[z]`` (um, slice 0 at 0).
    ``specimen_center_um``: height of the specimen's mid-plane (sets the coherence blur).
    """
    phase, absorption = _pad(phase), _pad(absorption)
    plane = phase.shape[1:]
    field = np.ones(plane, np.complex64)  # the illuminating plane wave
    height = 0.0  # where `field` is, um
    for z in np.flatnonzero(phase.any(axis=(1, 2)) | absorption.any(axis=(1, 2))):
        # free space between specimen slices is crossed in one step (it composes)
        distance = z * mic.z_step_um - height
        if distance and not np.all(field == 1):
            field = sfft.ifft2(sfft.fft2(field, workers=-1) * propagator(plane, mic, distance), workers=-1)
        field = field * specimen_field(phase[z], absorption[z])
        height = z * mic.z_step_um
    exit_height = height
    spectrum = sfft.fft2(field, workers=-1) * pupil(plane, mic)
    stack = np.empty((len(focus_um),) + tuple(s - 2 * PAD_PX for s in plane), np.float32)
    for i, focus in enumerate(focus_um):
        # the objective focused at `focus` images the exit wave propagated back to that plane
        back = propagator(plane, mic, float(focus) - exit_height)
        intensity = np.abs(sfft.ifft2(spectrum * back, workers=-1)) ** 2
        stack[i] = _crop(_partial_coherence(intensity.astype(np.float32), mic, float(focus) - specimen_center_um))
    return stack


def _partial_coherence(intensity: np.ndarray, mic: Microscope, defocus_um: float) -> np.ndarray:
    """Blur of a finite condenser aperture: each illumination angle shifts the defocused image."""
    sigma_px = 0.5 * abs(defocus_um) * mic.condenser_na / mic.pixel_size_um
    return ndimage.gaussian_filter(intensity, sigma_px) if sigma_px > 0.3 else intensity


def psf_sigma_px(mic: Microscope) -> float:
    """Gaussian sigma (pixels) of the widefield fluorescence PSF (0.21 lambda / NA, at least 0.7 px)."""
    return max(0.21 * mic.fluorescence_wavelength_um / mic.na / mic.pixel_size_um, 0.7)


# --------------------------------------------------------------------------- camera


def illumination(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """Uneven illumination: a tilt in a random direction plus vignetting, mean about 1."""
    ny, nx = shape[-2:]
    y = np.linspace(-0.5, 0.5, ny, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, nx, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    tilt = np.cos(angle) * x + np.sin(angle) * y
    vignette = x**2 + y**2
    return (1.0 + strength * (tilt - vignette + 1.0 / 6.0)).astype(np.float32)


# Above this many expected photons the Poisson distribution is replaced by its normal
# approximation (rounded to whole photons; skewness 1/sqrt(n) < 0.45): several times
# faster on big volumes, and no visible difference in an image.
POISSON_EXACT_BELOW = 5.0


def shot_noise(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Photon counts for ``expected`` photons per pixel: Poisson, normal approximation when bright."""
    expected = np.maximum(expected, 0.0).astype(np.float32)
    counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    counts = np.maximum(np.rint(counts), 0.0)
    dim = expected < POISSON_EXACT_BELOW
    if dim.any():
        counts[dim] = rng.poisson(expected[dim])
    return counts


def camera(rng: np.random.Generator, signal: np.ndarray, photons_at_one: float, read_noise: float,
           gamma: float) -> np.ndarray:
    """Record a normalised signal (1 = ``photons_at_one`` photons): shot + read noise, gamma, [0, 1]."""
    out = shot_noise(rng, signal * photons_at_one) / np.float32(photons_at_one)
    out += np.float32(read_noise) * rng.standard_normal(signal.shape, dtype=np.float32)
    out = np.clip(out, 0.0, 1.0)
    if gamma != 1.0:
        out = out**gamma
    return out.astype(np.float32)
