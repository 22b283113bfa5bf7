"""PLLS focus scoring (paper 002) on synthetic stacks with a known focal plane, and real data."""

import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.errors import Cancelled, InputError
from napari_virtual_stain.preprocess import plls, plls_scores, rank_planes, select_in_focus

FOCAL = 5
SEPHACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sephace-brightfield-dapi"


def specimen(kind, size=96, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "spots":  # nuclei-like blobs
        image = np.zeros((size, size))
        yx = rng.integers(0, size, (120, 2))
        image[yx[:, 0], yx[:, 1]] = 1.0
        image = ndi.gaussian_filter(image, 1.0)
    else:  # cytoplasm-like texture
        image = ndi.gaussian_filter(rng.random((size, size)), 2.0)
    return image / image.max()


def focal_stack(kind="spots", n_planes=9, noise=0.0, seed=0):
    """Planes blurred more the further they are from FOCAL, plus white noise."""
    rng = np.random.default_rng(seed + 100)
    sharp = specimen(kind, seed=seed)
    planes = [ndi.gaussian_filter(sharp, 0.01 + 1.2 * abs(z - FOCAL)) for z in range(n_planes)]
    return (np.stack(planes) + noise * rng.standard_normal((n_planes,) + sharp.shape)).astype(np.float32)


def power_law_image(beta, size=128, seed=0):
    """Random field whose power spectrum falls as frequency ** -beta."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) * f ** (-beta / 2)
    return np.fft.ifft2(spectrum).real


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_plls_measures_the_slope_of_a_power_law(beta):
    # one 128x128 field has few low-frequency rings, so average a few fields
    slopes = [plls(power_law_image(beta, seed=s), band=(None, 0.5)) for s in range(8)]
    assert np.mean(slopes) == pytest.approx(-beta, abs=0.05)
    default_band = [plls(power_law_image(beta, seed=s)) for s in range(8)]
    assert np.mean(default_band) == pytest.approx(-beta, abs=0.1)


@pytest.mark.parametrize("kind", ["spots", "texture"])
@pytest.mark.parametrize("noise", [0.0, 0.03, 0.1])
def test_score_peaks_at_the_focal_plane_also_under_noise(kind, noise):
    for seed in range(2):
        scores = plls_scores(focal_stack(kind, noise=noise, seed=seed))
        assert int(np.argmax(scores)) == FOCAL
        # blur steepens the slope: planes two or more steps away score clearly lower
        far = np.abs(np.arange(9) - FOCAL) >= 2
        assert scores[FOCAL] > scores[far].max() + 0.2


def test_keep_n_best_planes_in_stack_order():
    stack = focal_stack(noise=0.03)
    result = select_in_focus(stack, keep=3)
    np.testing.assert_array_equal(result.indices, [FOCAL - 1, FOCAL, FOCAL + 1])
    np.testing.assert_array_equal(result.planes, stack[[FOCAL - 1, FOCAL, FOCAL + 1]])
    assert result.planes.dtype == stack.dtype and result.scores.shape == (9,)
    assert select_in_focus(stack).indices.tolist() == [FOCAL]  # default: the single sharpest


def test_min_score_and_the_lower_is_sharper_convention():
    stack = focal_stack(noise=0.03)
    scores = plls_scores(stack)
    threshold = float(np.sort(scores)[-2])  # the two best pass
    result = select_in_focus(stack, min_score=threshold)
    assert sorted(result.indices.tolist()) == sorted(np.argsort(scores)[-2:].tolist())
    lower = select_in_focus(stack, keep=2, sharper="lower")
    assert sorted(lower.indices.tolist()) == sorted(np.argsort(scores)[:2].tolist())
    below = select_in_focus(stack, min_score=float(np.min(scores)), sharper="lower")
    assert below.indices.tolist() == [int(np.argmin(scores))]


def test_channels_first_stack_scores_one_channel_or_all():
    sharp = focal_stack("spots")
    reversed_focus = sharp[::-1].copy()  # focal plane at 9 - 1 - FOCAL in this channel
    stack = np.stack([sharp, reversed_focus])  # (C, Z, Y, X)
    assert int(np.argmax(plls_scores(stack, channel=0))) == FOCAL
    assert int(np.argmax(plls_scores(stack, channel=-1))) == 8 - FOCAL
    result = select_in_focus(stack, keep=1, channel=0)
    assert result.planes.shape == (2, 1, 96, 96)
    np.testing.assert_array_equal(result.planes[1, 0], reversed_focus[FOCAL])


def test_blank_planes_score_nan_and_are_never_kept():
    stack = focal_stack(noise=0.03)
    stack[0] = 0.0
    scores = plls_scores(stack)
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()
    assert rank_planes(scores)[-1] == 0
    assert 0 not in select_in_focus(stack, keep=8).indices
    with pytest.raises(InputError, match="only 8 non-blank"):
        select_in_focus(stack, keep=9)


def test_input_is_not_modified():
    stack = focal_stack(noise=0.03)
    before = stack.copy()
    result = select_in_focus(stack, keep=2)
    result.planes[...] = 0
    np.testing.assert_array_equal(stack, before)


@pytest.mark.parametrize(
    "stack, kwargs, message",
    [
        (np.random.default_rng(0).random((64, 64)), {}, "single plane"),
        (np.random.default_rng(0).random((1, 64, 64)), {}, "at least 2 planes; this one has 1"),
        (np.ones((4, 64, 64)), {}, "constant"),
        (np.where(np.arange(64) == 3, np.nan, 1.0) * np.ones((3, 64, 64)), {}, "NaN"),
        (np.random.default_rng(0).random((3, 64, 64)), {"keep": 2, "min_score": -2.0}, "not both"),
        (np.random.default_rng(0).random((3, 64, 64)), {"keep": 0}, "at least 1"),
        (np.random.default_rng(0).random((3, 64, 64)), {"min_score": 5.0}, "No plane reaches"),
        (np.random.default_rng(0).random((3, 12, 12)), {}, "too small"),
        (np.random.default_rng(0).random((3, 64, 64)), {"band": (0.3, 0.2)}, "band"),
        (np.random.default_rng(0).random((3, 64, 64)), {"sharper": "up"}, "'higher' or 'lower'"),
        (np.random.default_rng(0).random((2, 3, 64, 64)), {"channel": 2}, "Channel 2 does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(stack, kwargs, message):
    with pytest.raises(InputError, match=message):
        select_in_focus(stack, **kwargs)


def test_progress_and_cancel():
    stack = focal_stack(n_planes=4)
    calls = []
    plls_scores(stack, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        select_in_focus(stack, cancel=cancel)


@pytest.mark.skipif(not SEPHACE.exists(), reason="shared data not available")
def test_real_brightfield_focal_series_ranks_the_in_focus_planes_first():
    """sephace set1: 6 bright-field planes at z = 1327.6, 1341.95, 1351.6, 1352.25, 1362.0,
    1376.8 um. Planes 2 and 3 (0.65 um apart, the series' centre) show sharp cell edges;
    the others are visibly defocused."""
    tifffile = pytest.importorskip("tifffile")
    stack = tifffile.imread(SEPHACE / "set1_brightfield_ZYX.tif")
    scores = plls_scores(stack)  # measured: -3.32 -2.96 -1.75 -1.63 -3.38 -3.40
    assert sorted(rank_planes(scores)[:2].tolist()) == [2, 3]
    assert min(scores[2], scores[3]) > max(scores[[0, 1, 4, 5]]) + 1.0
