"""The synthetic data generators: determinism, documented ranges, and the physics they claim."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from napari_virtual_stain.io.synthetic import (
    CELL_TYPES,
    MULTIPLEX_CHANNELS,
    Microscope,
    make_cells_2d,
    make_cells_3d,
    make_ihc,
    make_multiplex,
    unmix_od,
)

SHAPE_2D = (128, 128)
SHAPE_3D = (32, 96, 96)
QUIET = replace(Microscope(), noise_level=1e-4, illumination_gradient=0.0)  # to look at the optics alone

GENERATORS = {
    "cells_2d": lambda seed: make_cells_2d(SHAPE_2D, seed=seed),
    "cells_3d": lambda seed: make_cells_3d((12, 64, 64), seed=seed),
    "ihc": lambda seed: make_ihc((128, 128), seed=seed),
    "multiplex": lambda seed: make_multiplex((128, 128), seed=seed),
}


def arrays(result: dict) -> dict:
    return {k: v for k, v in result.items() if isinstance(v, np.ndarray)}


def highpass(image: np.ndarray, sigma: float = 10.0) -> np.ndarray:
    return image - ndimage.gaussian_filter(image, sigma)


@pytest.fixture(scope="module")
def cells_2d():
    return make_cells_2d(SHAPE_2D, seed=3)


@pytest.fixture(scope="module")
def cells_3d():
    return make_cells_3d(SHAPE_3D, seed=1)


@pytest.fixture(scope="module")
def ihc():
    return make_ihc((256, 256), seed=2)


@pytest.fixture(scope="module")
def multiplex():
    return make_multiplex((256, 256), seed=4)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_data_other_seed_other_data(name):
    first, again, other = GENERATORS[name](5), GENERATORS[name](5), GENERATORS[name](6)
    assert arrays(first).keys() == arrays(again).keys()
    for key, value in arrays(first).items():
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    main = {"cells_2d": "brightfield", "cells_3d": "brightfield", "ihc": "rgb", "multiplex": "image"}[name]
    assert not np.array_equal(first[main], other[main])
    assert not np.array_equal(first["labels"], other["labels"])


# --------------------------------------------------------------------------- shapes and ranges


@pytest.mark.parametrize("fixture, shape", [("cells_2d", SHAPE_2D), ("cells_3d", SHAPE_3D)])
def test_cells_shapes_ranges_and_labels(request, fixture, shape):
    result = request.getfixturevalue(fixture)
    for key in ("brightfield", "nuclei", "membrane", "nuclei_clean", "membrane_clean"):
        image = result[key]
        assert image.shape == shape and image.dtype == np.float32, key
        assert image.min() >= 0.0 and image.max() <= 1.0, key
    labels, nuclei = result["labels"], result["nuclei_labels"]
    assert labels.dtype == np.int32 and nuclei.dtype == np.int32 and labels.shape == shape
    n = labels.max()
    assert n >= 3
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))  # 1..n without gaps
    inside = nuclei > 0
    np.testing.assert_array_equal(nuclei[inside], labels[inside])  # a nucleus lies in its own cell
    footprint = (labels > 0).any(axis=0) if labels.ndim == 3 else labels > 0
    assert 0.1 < footprint.mean() < 0.8  # cells with background between them
    # the brightfield background sits near the microscope's background level (0.6)
    empty = ~(labels > 0).any(axis=0) if labels.ndim == 3 else labels == 0
    background = result["brightfield"][..., empty]
    assert abs(np.median(background) - 0.6) < 0.05


def test_default_cell_count_and_pixel_size():
    result = make_cells_2d((256, 256), seed=0)
    assert result["pixel_size_um"] == pytest.approx(0.65)
    assert 25 <= result["labels"].max() <= 50  # about 45% coverage of 20 um cells
    assert make_cells_2d((96, 96), n_cells=4, seed=0)["labels"].max() <= 4


# --------------------------------------------------------------------------- label-free physics, 2D


def test_brightfield_contrast_is_higher_in_nuclei_than_in_background(cells_2d):
    contrast = np.abs(highpass(cells_2d["brightfield"]))
    nuclei = cells_2d["nuclei_labels"] > 0
    background = ndimage.binary_erosion(cells_2d["labels"] == 0, iterations=6)
    assert contrast[nuclei].mean() > 2.0 * contrast[background].mean()


def test_optical_phase_is_largest_in_nuclei(cells_2d):
    phase, labels, nuclei = cells_2d["phase"], cells_2d["labels"], cells_2d["nuclei_labels"]
    cytoplasm = (labels > 0) & (nuclei == 0)
    assert phase[nuclei > 0].mean() > 1.3 * phase[cytoplasm].mean() > 0
    assert phase[ndimage.binary_erosion(labels == 0, iterations=3)].max() < 0.05


def test_defocus_sign_inverts_contrast_and_focus_hides_it():
    above = make_cells_2d(SHAPE_2D, seed=3, microscope=replace(QUIET, defocus_um=2.0))
    below = make_cells_2d(SHAPE_2D, seed=3, microscope=replace(QUIET, defocus_um=-2.0))
    focused = make_cells_2d(SHAPE_2D, seed=3, microscope=replace(QUIET, defocus_um=0.0))
    cells = above["labels"] > 0
    a, b, f = (highpass(r["brightfield"])[cells] for r in (above, below, focused))
    assert np.corrcoef(a, b)[0, 1] < -0.5  # transport of intensity: contrast ~ defocus x curvature
    assert f.std() < 0.6 * min(a.std(), b.std())  # a phase object nearly vanishes in focus


def test_fluorescence_stains_the_right_structures(cells_2d):
    labels, nuclei = cells_2d["labels"], cells_2d["nuclei_labels"] > 0
    nuclear = cells_2d["nuclei_clean"]
    assert nuclear[nuclei].mean() > 10 * nuclear[labels == 0].mean()
    edges = ndimage.morphological_gradient(labels, size=3) > 0
    membrane = cells_2d["membrane_clean"]
    interior = ndimage.binary_erosion(labels > 0, iterations=4) & ~nuclei
    assert membrane[edges].mean() > 4 * membrane[interior].mean()
    # the noisy images are the clean ones plus camera noise
    assert np.corrcoef(cells_2d["nuclei"].ravel(), nuclear.ravel())[0, 1] > 0.9


def test_a_different_microscope_looks_different():
    default = make_cells_2d(SHAPE_2D, seed=3)
    other = make_cells_2d(SHAPE_2D, seed=3, microscope=Microscope.different())
    np.testing.assert_array_equal(default["labels"], other["labels"])  # same cells...
    cells = default["labels"] > 0
    a, b = highpass(default["brightfield"])[cells], highpass(other["brightfield"])[cells]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.5  # ...look different: other focus, contrast, camera
    background = ndimage.binary_erosion(default["labels"] == 0, iterations=6)
    noise = [np.std(highpass(r["brightfield"], 2)[background]) for r in (default, other)]
    assert noise[1] > 1.5 * noise[0]


# --------------------------------------------------------------------------- label-free physics, 3D


def test_focal_series_contrast_is_lowest_in_focus_and_flips_sign_around_it(cells_3d):
    stack, focus = cells_3d["brightfield"], cells_3d["focal_plane"]
    assert focus == pytest.approx((SHAPE_3D[0] - 1) / 2)
    cells = (cells_3d["labels"] > 0).any(axis=0)
    detail = np.stack([highpass(plane, 12) for plane in stack])
    contrast = np.array([plane[cells].std() for plane in detail])
    below, above = int(np.floor(focus)), int(np.ceil(focus))
    near = slice(below - 6, above + 7)
    assert abs(np.argmin(contrast[near]) + near.start - focus) <= 1.5
    assert min(contrast[above + 3], contrast[below - 3]) > 1.2 * contrast[above]
    for d in (3, 6):
        ratio = contrast[above + d] / contrast[below - d]
        assert 0.75 < ratio < 1.33, (d, ratio)  # symmetric about the focal plane...
        r = np.corrcoef(detail[above + d][cells], detail[below - d][cells])[0, 1]
        assert r < -0.4, (d, r)  # ...with opposite sign


def test_fluorescence_volume_is_brightest_in_the_cells_plane(cells_3d):
    nuclear = cells_3d["nuclei_clean"]
    per_plane = nuclear.mean(axis=(1, 2))
    focus = cells_3d["focal_plane"]
    assert abs(np.argmax(per_plane) - focus) <= 2
    assert per_plane[0] < 0.1 * per_plane.max() and per_plane[-1] < 0.1 * per_plane.max()
    assert cells_3d["pixel_size_um"] == pytest.approx((1.0, 0.65, 0.65))


def test_focus_offset_moves_the_focal_plane():
    mic = replace(Microscope(), focus_offset_um=3.0)
    assert make_cells_3d((16, 48, 48), seed=0, microscope=mic)["focal_plane"] == pytest.approx(7.5 - 3.0)


# --------------------------------------------------------------------------- IHC


def test_ihc_types_and_ranges(ihc):
    assert ihc["rgb"].shape == (256, 256, 3) and ihc["rgb"].dtype == np.uint8
    for key in ("hematoxylin", "dapi", "lap2", "marker"):
        assert ihc[key].dtype == np.float32 and ihc[key].shape == (256, 256)
        assert ihc[key].min() >= 0 and ihc[key].max() <= 1
    labels, classes, positive = ihc["labels"], ihc["classes"], ihc["positive"]
    n = labels.max()
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    assert positive.shape == (n + 1,) and not positive[0]
    np.testing.assert_array_equal(classes, np.where(labels > 0, np.where(positive[labels], 2, 1), 0))
    assert 0.15 < positive[1:].mean() < 0.45  # about 30% Ki67-positive nuclei


def test_ihc_dab_unmixes_high_exactly_in_positive_nuclei(ihc):
    hematoxylin, dab = unmix_od(ihc["rgb"])
    labels, positive = ihc["labels"], ihc["positive"]
    ids = np.arange(1, labels.max() + 1)
    dab_per_nucleus = ndimage.mean(dab, labels, ids)
    called_positive = dab_per_nucleus > 0.15
    assert (called_positive == positive[1:]).mean() > 0.95
    assert dab[ihc["classes"] == 0].mean() < 0.05
    # the colour deconvolution recovers the stain amounts the image was made from
    np.testing.assert_allclose(dab_per_nucleus, ndimage.mean(ihc["od_dab"], labels, ids), atol=0.05)
    negative = ihc["classes"] == 1
    assert hematoxylin[negative].mean() > 4 * hematoxylin[ihc["classes"] == 0].mean()


def test_ihc_colours_brown_positive_blue_negative(ihc):
    rgb = ihc["rgb"].astype(float)
    positive, negative = ihc["classes"] == 2, ihc["classes"] == 1
    assert rgb[positive, 0].mean() > rgb[positive, 2].mean()  # brown: more red than blue
    assert rgb[negative, 2].mean() > rgb[negative, 0].mean()  # hematoxylin blue
    assert rgb[ihc["labels"] == 0].mean() > 180  # pale background


def test_ihc_modalities_follow_the_nuclei(ihc):
    labels = ihc["labels"]
    nuclei = labels > 0
    assert ihc["dapi"][nuclei].mean() > 5 * ihc["dapi"][~nuclei].mean()
    marker_pos = ihc["marker"][ihc["classes"] == 2].mean()
    assert marker_pos > 5 * ihc["marker"][ihc["classes"] == 1].mean()
    rim = nuclei & ~ndimage.binary_erosion(nuclei, iterations=2)
    core = ndimage.binary_erosion(nuclei, iterations=4)
    assert ihc["lap2"][rim].mean() > 2 * ihc["lap2"][core].mean()  # the envelope is a ring
    assert ihc["hematoxylin"][nuclei].mean() > 3 * ihc["hematoxylin"][~nuclei].mean()


# --------------------------------------------------------------------------- multiplex


def per_cell_means(result: dict) -> np.ndarray:
    ids = np.arange(1, result["labels"].max() + 1)
    return np.stack([ndimage.mean(channel, result["labels"], ids) for channel in result["image"]], axis=1)


def test_multiplex_types_ranges_and_sparsity(multiplex):
    image = multiplex["image"]
    assert image.dtype == np.float32 and image.shape == (len(MULTIPLEX_CHANNELS), 256, 256)
    assert multiplex["channel_names"] == MULTIPLEX_CHANNELS and len(MULTIPLEX_CHANNELS) >= 7
    assert image.min() >= 0 and np.array_equal(image, np.round(image))  # counts
    zeros = (image == 0).mean(axis=(1, 2))
    assert (zeros > 0.4).all() and zeros.mean() > 0.7  # sparse like MIBI: mostly zeros
    types = multiplex["cell_types"]
    assert types.shape == (multiplex["labels"].max() + 1,) and types[0] == 0
    assert set(np.unique(types[1:])) <= set(range(1, len(CELL_TYPES)))
    assert multiplex["expression"].shape == (len(types), len(MULTIPLEX_CHANNELS))
    assert multiplex["rates"].shape == image.shape and multiplex["rates"].min() > 0


def test_multiplex_truth_relationships(multiplex):
    table = multiplex["expression"][1:]
    col = {name: i for i, name in enumerate(MULTIPLEX_CHANNELS)}
    cd3, cd45, cd20, panck = (table[:, col[m]] for m in ("CD3", "CD45", "CD20", "PanCK"))
    assert (cd3 > 0).sum() > 5 and (cd20 > 0).sum() > 5
    assert np.all(cd45[cd3 > 0] > 0)  # CD3 within CD45
    assert not np.any((cd3 > 0) & (cd20 > 0))  # T and B cells are different cells
    assert not np.any((panck > 0) & (cd45 > 0))  # epithelium is not immune


def test_multiplex_image_shows_the_relationships(multiplex):
    means = per_cell_means(multiplex)
    col = {name: i for i, name in enumerate(MULTIPLEX_CHANNELS)}
    cd3, cd45, cd20 = means[:, col["CD3"]], means[:, col["CD45"]], means[:, col["CD20"]]
    t_cells = cd3 > 0.4
    assert t_cells.sum() > 5
    assert np.all(cd45[t_cells] > 0.2)  # every CD3-bright cell is CD45-bright
    assert not np.any(t_cells & (cd20 > 0.4))  # no cell is bright for both CD3 and CD20
    assert np.corrcoef(means[:, col["PanCK"]], cd45)[0, 1] < -0.2
    assert np.corrcoef(means[:, col["DAPI"]], means[:, col["Histone H3"]])[0, 1] > 0.8
