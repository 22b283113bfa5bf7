"""Test-time augmentation in the Predictor: averaged over the symmetries of the Y-X plane, turned back."""

import threading

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.engine.tta import plane_transforms
from napari_virtual_stain.errors import Cancelled
from napari_virtual_stain.models.card import ModelCard

RNG = np.random.default_rng(7)


def make_card(n_in=1, n_out=1, dims=2, tile=32, overlap=16):
    tile = [tile] * dims if isinstance(tile, int) else list(tile)
    overlap = [overlap] * dims if isinstance(overlap, int) else list(overlap)
    return ModelCard(name="tta test", task="stain", architecture="test", arch_args={}, spatial_dims=dims,
                     input_channels=[f"in{i}" for i in range(n_in)], output_channels=[f"out{i}" for i in range(n_out)],
                     input_normalisation={"kind": "none"}, output_activation="none", tile=tile, overlap=overlap)


def skewed_convs(n_in, n_out, dims=2, seed=0):
    """Random 3x3 convolutions: not equivariant to flips or turns (each output sees 3 px around it)."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(n_in, 4, 3, padding=1), torch.nn.Tanh(), conv(4, 4, 3, padding=1),
                               torch.nn.Tanh(), conv(4, n_out, 3, padding=1))


def symmetric_convs(n_in, n_out):
    """3x3 kernels unchanged by every flip and quarter turn (zero padding is too): an equivariant network."""
    torch.manual_seed(1)
    layers = []
    for cin, cout in ((n_in, 4), (4, n_out)):
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        with torch.no_grad():
            w = conv.weight
            w.copy_(sum(torch.rot90(v, k, dims=(-2, -1)) for v in (w, w.flip(-1)) for k in range(4)) / 8)
        layers += [conv, torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def untiled(model, image):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(image))[None]).numpy()[0]


def manual_average(model, image, transforms):
    """What TTA should be: the untiled prediction of each transformed image, turned back, averaged."""
    outs = [t.invert(untiled(model, t.apply(image[None])[0])[None])[0] for t in transforms]
    return np.mean(outs, axis=0)


def test_the_eight_transforms_are_distinct_and_invert_exactly():
    tile = RNG.random((2, 3, 5, 5), dtype=np.float32)
    seen = {t.apply(tile).tobytes() for t in plane_transforms()}
    assert len(seen) == 8
    for t in plane_transforms():
        np.testing.assert_array_equal(t.invert(t.apply(tile)), tile)
    assert len(plane_transforms(quarter_turns=False)) == 4


@pytest.mark.parametrize("model", [torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.Tanh(), torch.nn.Conv2d(3, 2, 1)),
                                   symmetric_convs(2, 2)], ids=["pointwise", "symmetric-kernels"])
def test_an_equivariant_model_gives_the_same_result_with_and_without_tta(model):
    image = RNG.random((2, 70, 50), dtype=np.float32)
    predictor = Predictor(model, make_card(2, 2), device="cpu", precision="fp32", batch_size=3)
    plain = predictor.predict(image)
    with_tta = predictor.predict(image, tta=True)
    np.testing.assert_allclose(with_tta, plain, atol=2e-6)


def test_a_skewed_model_gives_the_average_of_its_turned_back_predictions():
    model = skewed_convs(1, 2)
    image = RNG.random((1, 70, 50), dtype=np.float32)
    predictor = Predictor(model, make_card(1, 2), device="cpu", precision="fp32", batch_size=3, tta=True)
    with_tta = predictor.predict(image)  # the Predictor's default
    plain = predictor.predict(image, tta=False)
    expected = manual_average(model, image, plane_transforms())
    assert np.abs(with_tta - plain).max() > 1e-2  # the model really is not equivariant
    np.testing.assert_allclose(with_tta, expected, atol=1e-5)


def test_rectangular_tiles_of_a_fixed_shape_network_use_the_four_shape_keeping_transforms():
    model = skewed_convs(1, 1)
    image = RNG.random((1, 40, 24), dtype=np.float32)
    predictor = Predictor(model, make_card(tile=(40, 24), overlap=(8, 8)), device="cpu", precision="fp32")
    assert len(predictor.transforms_for((40, 24), True)) == 4
    result = predictor.predict(image, tta=True)
    assert any("4 of the 8" in w for w in predictor.warnings)
    np.testing.assert_allclose(result, manual_average(model, image, plane_transforms(False)), atol=1e-5)
    # A network that takes any multiple of its size multiple can take the turned tile.
    model.size_multiple = 4
    assert len(Predictor(model, make_card(tile=(40, 24), overlap=(8, 8)), device="cpu").transforms_for((40, 24), True)) == 8


def test_3d_tta_turns_the_yx_planes_and_never_flips_z():
    model = skewed_convs(1, 1, dims=3)
    image = RNG.random((1, 16, 40, 36), dtype=np.float32)
    predictor = Predictor(model, make_card(dims=3, tile=(16, 32, 32), overlap=(0, 16, 16)), device="cpu", precision="fp32")
    result = predictor.predict(image, tta=True)
    np.testing.assert_allclose(result, manual_average(model, image, plane_transforms()), atol=1e-5)
    z_flipped = manual_average(model, image[:, ::-1], plane_transforms())[:, ::-1]
    assert np.abs(result - z_flipped).max() > 1e-3  # z flips are not among the transforms


def test_progress_counts_every_pass_and_cancel_stops_between_passes():
    calls, forwards = [], []
    cancel = threading.Event()

    class Counting(torch.nn.Module):
        def forward(self, x):
            forwards.append(len(x))
            return x

    predictor = Predictor(Counting(), make_card(tile=16, overlap=4), device="cpu", batch_size=4, tta=True)
    predictor.predict(RNG.random((1, 50, 40), dtype=np.float32), progress=lambda d, t: calls.append((d, t)))
    total = 4 * 3 * 8  # 12 tiles, 8 passes each
    assert calls[-1] == (total, total) and len(forwards) == 3 * 8
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    forwards.clear()
    with pytest.raises(Cancelled):
        predictor.predict(RNG.random((1, 50, 40), dtype=np.float32), progress=lambda d, t: cancel.set(), cancel=cancel)
    assert forwards == [4]  # the pass that was running finished; not the other 7 of its batch
