"""Synthetic cultured cells: a label-free (brightfield) image and its fluorescence stains.

The brightfield image is computed from the cells' refractive index by wave optics
(:mod:`.synthetic_optics`), so the relation a virtual-staining model must learn (phase
curvature of dense nuclei -> nuclear stain; cell borders -> membrane stain) is the one a
real microscope produces, including its dependence on focus.

Values: every image is float32 in [0, 1]; labels are int32 (0 = background, cell i and
its nucleus share the label i, numbered 1..n without gaps).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .synthetic_geometry import (
    Blob,
    boundaries,
    nucleus_inside,
    random_blob,
    rasterize,
    scatter_centers,
    smooth_noise,
)
from .synthetic_optics import (
    Microscope,
    brightfield_focal_series,
    brightfield_thin,
    camera,
    illumination,
    psf_sigma_px,
)

CELL_RADIUS_UM = 10.0  # cultured cells, about 20 um across
DELTA_N_CYTOPLASM = 0.018  # refractive index above the medium
DELTA_N_NUCLEUS = 0.030  # nuclei are denser than cytoplasm
DELTA_N_NUCLEOLUS = 0.030  # extra, on top of the nucleus
ABSORPTION_PER_UM = 0.004  # unstained cells absorb very little
NUCLEAR_ABSORPTION_PER_UM = 0.008
FLUORESCENCE_OFFSET = 0.02  # camera offset + autofluorescence in the fluorescence images


def _default_cell_count(area_px: float, radius_px: float, coverage: float = 0.45) -> int:
    return max(1, int(round(coverage * area_px / (np.pi * radius_px**2))))


def _sequential(labels: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber cells 1..n (some may have been hidden by neighbours), nuclei alike."""
    present = np.unique(labels)
    present = present[present > 0]
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[labels], lookup[nuclei]


def _cell_blobs(rng, shape_yx, n_cells, radius_px, center_z=None, half_height=None):
    centers = scatter_centers(rng, shape_yx, n_cells, min_distance=1.1 * radius_px, margin=-0.3 * radius_px)
    cells = []
    for c in centers:
        radius = radius_px * rng.uniform(0.75, 1.25)
        if center_z is None:
            cells.append(random_blob(rng, c, radius, elongation=0.7, roughness=0.12))
        else:
            z = center_z + rng.normal(0.0, 0.3)
            cells.append(random_blob(rng, (z, *c), radius, elongation=0.7, roughness=0.12,
                                     half_height=half_height * rng.uniform(0.8, 1.2)))
    return cells


def _nucleoli(rng, nuclei: list[Blob], three_d: bool) -> list[Blob]:
    spots = []
    for nucleus in nuclei:
        radius = float(np.sqrt(nucleus.semi_axes[0] * nucleus.semi_axes[1]))
        for _ in range(rng.integers(1, 4)):
            offset = rng.normal(0.0, 0.3 * radius, 2)
            center = list(nucleus.center)
            center[-2] += offset[0]
            center[-1] += offset[1]
            spots.append(random_blob(rng, center, rng.uniform(1.0, 2.0), roughness=0.0,
                                     half_height=1.0 if three_d else 0.0))
    return spots


def _fluorescence(rng, clean: np.ndarray, mic: Microscope, light: np.ndarray) -> np.ndarray:
    """Camera image of a fluorescence signal (the brightest stain has 5x fewer photons than brightfield)."""
    photons = 0.2 / mic.noise_level**2
    return camera(rng, clean * light + FLUORESCENCE_OFFSET, photons, mic.noise_level / 3, 1.0)


def _brightfield_camera(rng, intensity: np.ndarray, mic: Microscope, light: np.ndarray) -> np.ndarray:
    signal = intensity * light * mic.background
    photons = 1.0 / (mic.noise_level**2 * mic.background)  # 1/noise^2 photons at the background
    return camera(rng, signal, photons, mic.noise_level * mic.background / 3, mic.gamma)


def make_cells_2d(shape: tuple[int, int] = (256, 256), n_cells: int | None = None, seed: int = 0,
                  microscope: Microscope | None = None) -> dict:
    """A field of cultured cells seen label-free and with nuclear and membrane stains.

    Returns a dict of float32 (Y, X) images in [0, 1]:
    ``brightfield`` (label-free, defocused by ``microscope.defocus_um``, uneven
    illumination, Poisson-Gaussian noise), ``nuclei`` and ``membrane`` (fluorescence with
    noise), ``nuclei_clean`` and ``membrane_clean`` (the same without noise or uneven
    light); ``phase`` (float32, radians: the optical phase delay of the cells, the physical
    truth behind the brightfield contrast); ``labels`` and ``nuclei_labels`` (int32
    instances; a nucleus has its cell's label); ``pixel_size_um`` (float).
    ``n_cells`` defaults to about 45% coverage. Deterministic for a given ``seed``.
    """
    mic = microscope or Microscope()
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    radius_px = CELL_RADIUS_UM / mic.pixel_size_um
    n_cells = n_cells if n_cells is not None else _default_cell_count(shape[0] * shape[1], radius_px)

    cells = _cell_blobs(rng, shape, n_cells, radius_px)
    cell_labels, cell_rho = rasterize(cells, shape)
    nuclei = [nucleus_inside(rng, cell) for cell in cells]
    nuclei_labels, nuclei_rho = rasterize(nuclei, shape, within=cell_labels,
                                          labels_of=list(range(1, len(cells) + 1)))
    spots = _nucleoli(rng, nuclei, False)
    nucleoli, _ = rasterize(spots, shape, within=(nuclei_labels > 0).astype(np.int32), labels_of=[1] * len(spots))

    # Thickness (um) of each cell as a dome, the nucleus a thicker, denser dome inside it.
    height = np.concatenate([[0.0], rng.uniform(3.0, 6.0, len(cells))]).astype(np.float32)
    h_cell = height[cell_labels] * np.sqrt(np.clip(1 - cell_rho**2, 0, 1))
    h_nucleus = np.minimum(0.8 * height[nuclei_labels] * np.sqrt(np.clip(1 - nuclei_rho**2, 0, 1)), h_cell)
    # One density texture: chromatin and granules raise both the refractive index and the
    # DNA stain, so brightfield texture and nuclear stain texture are related, as in cells.
    texture = smooth_noise(rng, shape, 1.2)
    granules = 1.0 + 0.1 * texture
    path_um = (DELTA_N_CYTOPLASM * (h_cell - h_nucleus) * granules + DELTA_N_NUCLEUS * h_nucleus
               + DELTA_N_NUCLEOLUS * 1.5 * (nucleoli > 0))
    path_um = ndimage.gaussian_filter(path_um.astype(np.float32), 0.5) * mic.contrast
    phase = (2 * np.pi / mic.wavelength_um * path_um).astype(np.float32)
    absorption = mic.contrast * (ABSORPTION_PER_UM * h_cell + NUCLEAR_ABSORPTION_PER_UM * h_nucleus)

    light = illumination(rng, shape, mic.illumination_gradient)
    intensity = brightfield_thin(phase, absorption, mic, mic.defocus_um)
    brightfield = _brightfield_camera(rng, intensity, mic, light)

    sigma = psf_sigma_px(mic)
    dna = _dna_content(rng, len(cells))
    chromatin = 1.0 + 0.25 * texture
    nuclear_stain = dna[nuclei_labels] * (0.5 + 0.5 * np.sqrt(np.clip(1 - nuclei_rho**2, 0, 1))) * chromatin
    nuclei_clean = np.clip(0.4 * ndimage.gaussian_filter(nuclear_stain * (nuclei_labels > 0), sigma), 0, 1)
    membrane_clean = _membrane(rng, cell_labels, len(cells), sigma)
    return {**_paired_outputs(rng, brightfield, nuclei_clean, membrane_clean, mic, light, cell_labels, nuclei_labels),
            "phase": phase, "pixel_size_um": mic.pixel_size_um}


def _paired_outputs(rng, brightfield, nuclei_clean, membrane_clean, mic: Microscope, light,
                    cell_labels, nuclei_labels) -> dict:
    """What 2D and 3D samples share: the label-free image, noisy stains, clean stains, labels."""
    fluorescence_light = 1.0 + 0.5 * (light - 1.0)  # fluorescence excitation is less uneven
    cell_labels, nuclei_labels = _sequential(cell_labels, nuclei_labels)
    return {
        "brightfield": brightfield,
        "nuclei": _fluorescence(rng, nuclei_clean, mic, fluorescence_light),
        "membrane": _fluorescence(rng, membrane_clean, mic, fluorescence_light),
        "nuclei_clean": nuclei_clean.astype(np.float32),
        "membrane_clean": membrane_clean.astype(np.float32),
        "labels": cell_labels,
        "nuclei_labels": nuclei_labels,
    }


def _dna_content(rng, n: int) -> np.ndarray:
    """Per-cell DNA amount: 1 (G1) or 2 (G2, a quarter of the cells), +-10%; index 0 = background."""
    dna = np.where(rng.uniform(size=n) < 0.25, 2.0, 1.0) * rng.lognormal(0.0, 0.1, n)
    return np.concatenate([[0.0], dna]).astype(np.float32)


def _membrane(rng, cell_labels: np.ndarray, n_cells: int, sigma) -> np.ndarray:
    """Membrane stain: the outline of every cell, brightness varying by cell, blurred by the PSF."""
    brightness = np.concatenate([[0.0], rng.uniform(0.6, 1.0, n_cells)]).astype(np.float32)
    outline = boundaries(cell_labels) * brightness[cell_labels]
    return np.clip(1.6 * ndimage.gaussian_filter(outline, sigma), 0, 1).astype(np.float32)


def make_cells_3d(shape: tuple[int, int, int] = (32, 256, 256), n_cells: int | None = None, seed: int = 0,
                  microscope: Microscope | None = None) -> dict:
    """A z-stack of cultured cells: a brightfield focal series and fluorescence volumes.

    Cells are flattened 3D ellipsoids (irregular in plane) lying around the stack's middle
    plane; their nuclei are denser ellipsoids inside. Plane z of ``brightfield`` is focused
    at ``z * z_step_um + focus_offset_um`` (multi-slice wave propagation), so the contrast
    is weakest where the cells are in focus and grows, with opposite signs, above and below.
    Returns float32 (Z, Y, X) volumes in [0, 1]: ``brightfield``, ``nuclei``, ``membrane``,
    ``nuclei_clean``, ``membrane_clean``; int32 ``labels`` and ``nuclei_labels``; and
    ``focal_plane`` (index of the plane focused on the cells' mid-plane, float),
    ``pixel_size_um`` (z, y, x).
    """
    mic = microscope or Microscope()
    rng = np.random.default_rng(seed)
    nz, ny, nx = (int(s) for s in shape)
    radius_px = CELL_RADIUS_UM / mic.pixel_size_um
    n_cells = n_cells if n_cells is not None else _default_cell_count(ny * nx, radius_px)
    middle = (nz - 1) / 2.0
    half_height = 2.5 / mic.z_step_um  # cells about 5 um thick

    cells = _cell_blobs(rng, (ny, nx), n_cells, radius_px, center_z=middle, half_height=half_height)
    cell_labels, cell_rho = rasterize(cells, (nz, ny, nx))
    nuclei = [nucleus_inside(rng, cell, height=0.7) for cell in cells]
    nuclei_labels, nuclei_rho = rasterize(nuclei, (nz, ny, nx), within=cell_labels,
                                          labels_of=list(range(1, len(cells) + 1)))
    spots = _nucleoli(rng, nuclei, True)
    nucleoli, _ = rasterize(spots, (nz, ny, nx), within=(nuclei_labels > 0).astype(np.int32),
                            labels_of=[1] * len(spots))

    # Per-voxel work only on the slab of planes the cells occupy (the rest is medium).
    occupied = np.flatnonzero(cell_labels.any(axis=(1, 2)))
    slab = slice(int(occupied[0]), int(occupied[-1]) + 1) if occupied.size else slice(0, 0)
    cells_slab, nuclei_slab = cell_labels[slab], nuclei_labels[slab]
    texture = smooth_noise(rng, cells_slab.shape, (0.7, 1.2, 1.2))  # shared by index and stain (see 2D)
    delta_n = np.where(nuclei_slab > 0, DELTA_N_NUCLEUS, np.where(cells_slab > 0, DELTA_N_CYTOPLASM, 0.0))
    delta_n = (delta_n * (1.0 + 0.1 * texture) + DELTA_N_NUCLEOLUS * (nucleoli[slab] > 0)).astype(np.float32)
    delta_n = ndimage.gaussian_filter(delta_n, (0.0, 0.5, 0.5)) * mic.contrast
    phase = np.zeros((nz, ny, nx), np.float32)
    phase[slab] = 2 * np.pi / mic.wavelength_um * delta_n * mic.z_step_um
    absorption = np.zeros((nz, ny, nx), np.float32)
    absorption[slab] = mic.contrast * mic.z_step_um * (
        ABSORPTION_PER_UM * (cells_slab > 0) + NUCLEAR_ABSORPTION_PER_UM * (nuclei_slab > 0))

    focus_um = np.arange(nz) * mic.z_step_um + mic.focus_offset_um
    light = illumination(rng, (ny, nx), mic.illumination_gradient)
    intensity = brightfield_focal_series(phase, absorption, mic, focus_um,
                                         specimen_center_um=middle * mic.z_step_um)
    brightfield = _brightfield_camera(rng, intensity, mic, light)

    sigma_xy = psf_sigma_px(mic)
    sigma_z = 0.6 * mic.fluorescence_wavelength_um * mic.medium_index / mic.na**2 / mic.z_step_um
    dna = _dna_content(rng, len(cells))
    stain = np.zeros((nz, ny, nx), np.float32)
    stain[slab] = dna[nuclei_slab] * (1.0 + 0.25 * texture) * (nuclei_slab > 0)
    nuclei_clean = np.clip(0.8 * ndimage.gaussian_filter(stain, (sigma_z, sigma_xy, sigma_xy)), 0, 1)
    membrane_clean = _membrane(rng, cell_labels, len(cells), (sigma_z, sigma_xy, sigma_xy))
    return {
        **_paired_outputs(rng, brightfield, nuclei_clean, membrane_clean, mic, light, cell_labels, nuclei_labels),
        "focal_plane": float(middle - mic.focus_offset_um / mic.z_step_um),
        "pixel_size_um": (mic.z_step_um, mic.pixel_size_um, mic.pixel_size_um),
    }
