"""2.5D models: a window of z planes in, its centre plane out; sliding it along a stack."""

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.normalise import compute_stats, normalise
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint
from napari_virtual_stain.models.zwindow import ZWindow, z_window
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain
from napari_virtual_stain.training.datasets import PairedPatches
from napari_virtual_stain.training.layer_pairs import window_for_pair
from napari_virtual_stain.training.starting import model_for_training

RNG = np.random.default_rng(11)
SMALL = {"planes": 3, "centre": 1, "depth": 2, "base": 4, "norm": "none"}


def tiny_25d(**args):
    torch.manual_seed(0)
    model, card = model_for_training(arch="unet-2.5d", n_in=1, n_out=2, spatial_dims=2, input_names=["bf"],
                                     output_names=["nuclei", "membrane"], arch_args={**SMALL, **args})
    card.tile, card.overlap = [32, 32], [16, 16]
    return model.eval(), card


def on_window(model, card, stack, planes):
    """The network on one window given by hand (normalised with the whole stack's statistics)."""
    stats = compute_stats(stack, card.input_normalisation)
    x = normalise(stack[:, planes], card.input_normalisation, stats).reshape(-1, *stack.shape[2:])
    with torch.no_grad():
        return model(torch.from_numpy(x)[None]).numpy()[0]


def test_the_card_records_planes_and_centre_and_survives_a_checkpoint(tmp_path):
    model, card = tiny_25d(planes=4, centre=1)
    assert card.spatial_dims == 2 and card.input_channels == ["bf"] and card.architecture == "unet-2.5d"
    assert (card.arch_args["planes"], card.arch_args["centre"]) == (4, 1)
    assert model.encoders[0][0].in_channels == 4  # one channel x 4 planes
    save_checkpoint(tmp_path / "m.pt", model, card)
    _, loaded = load_checkpoint(tmp_path / "m.pt")
    assert z_window(loaded) == ZWindow(4, 1)
    assert z_window(model_for_training(arch="unet", n_in=1, n_out=1)[1]) is None


def test_shapes_a_plane_for_one_window_and_a_stack_for_a_stack():
    model, card = tiny_25d()
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    stack = RNG.random((1, 7, 40, 48), dtype=np.float32)
    assert predictor.predict(stack).shape == (2, 7, 40, 48)
    one = run_stain(predictor, stack[0, 2:5], region=Region((1, 0, 0), (2, 40, 48)))
    assert one.data.shape == (2, 1, 40, 48)


def test_sliding_equals_predicting_each_window_on_its_own():
    model, card = tiny_25d()
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    stack = RNG.random((1, 6, 40, 48), dtype=np.float32)
    slid = predictor.predict(stack)
    for z in range(6):
        planes = np.clip(np.arange(3) + z - 1, 0, 5)  # the end planes repeated at the ends
        np.testing.assert_allclose(slid[:, z], on_window(model, card, stack, planes), atol=1e-5)
    # Each plane alone (the current view of one plane) reads the planes it needs around it.
    for z in (0, 3, 5):
        view = run_stain(predictor, stack[0], region=Region((z, 0, 0), (z + 1, 40, 48)))
        np.testing.assert_allclose(view.data[:, 0], slid[:, z], atol=1e-5)
        assert any("ends of the stack" in w for w in view.warnings) == (z in (0, 5))


def test_tta_composes_with_the_window():
    model, card = tiny_25d()
    stack = RNG.random((1, 4, 32, 32), dtype=np.float32)
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    from napari_virtual_stain.engine.tta import plane_transforms
    expected = []
    for t in plane_transforms():
        turned = np.ascontiguousarray(t.apply(stack[None])[0])
        expected.append(t.invert(on_window(model, card, turned, [0, 1, 2])[None])[0])
    np.testing.assert_allclose(predictor.predict(stack, tta=True)[:, 1], np.mean(expected, axis=0), atol=1e-5)


@pytest.mark.parametrize("shape, message", [((1, 2, 32, 32), "has 2 z-plane(s), but this 2.5D model needs 3 planes"),
                                            ((1, 32, 32), "is a single plane")])
def test_too_few_planes_is_a_clear_error(shape, message):
    model, card = tiny_25d()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Predictor(model, card, device="cpu").predict(RNG.random(shape, dtype=np.float32))


def test_training_windows_are_normalised_as_the_predictor_normalises_them():
    _, card = tiny_25d()
    stack = (RNG.random((1, 5, 48, 40)) * 900 + 100).astype(np.float32)
    stack[:, 4] *= 3  # a bright end plane: per-plane statistics would hide it
    target = RNG.random((1, 5, 48, 40)).astype(np.float32)
    data = PairedPatches([stack], [target], (32, 32), 2, augment=False, val_fraction=0.0, z_window=ZWindow(3, 1))
    assert len(data.pairs) == 3 and data.n_in == 3  # planes 1, 2, 3 have a whole window
    stats = compute_stats(stack, card.input_normalisation)
    for pair, z in zip(data.pairs, (1, 2, 3)):
        expected = normalise(stack[:, z - 1:z + 2], card.input_normalisation, stats).reshape(3, 48, 40)
        np.testing.assert_allclose(pair.x, expected, rtol=1e-6)
    assert data.describe()["z_window"] == {"planes": 3, "centre": 1}


def test_a_target_plane_places_the_window_inside_the_stack():
    assert window_for_pair((1, 6, 8, 8), False) == (ZWindow(6, 3), slice(0, 6))
    assert window_for_pair((1, 6, 8, 8), False, planes=3, target_plane=0) == (ZWindow(3, 0), slice(0, 3))
    assert window_for_pair((1, 6, 8, 8), False, planes=3, target_plane=3) == (ZWindow(3, 1), slice(2, 5))
    assert window_for_pair((1, 6, 8, 8), True) == (ZWindow(5, 2), slice(0, 6))
    with pytest.raises(InputError, match="plane 0 of"):
        window_for_pair((1, 6, 8, 8), False, target_plane=0, window=ZWindow(3, 1))
    with pytest.raises(InputError, match="single plane"):
        window_for_pair((1, 8, 8), False)


def test_a_plane_of_a_stack_costs_one_plane_of_work():
    model, card = tiny_25d()
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    stack = RNG.random((1, 6, 32, 32), dtype=np.float32)
    calls = []
    view = run_stain(predictor, stack[0], region=Region((2, 0, 0), (3, 32, 32)), progress=lambda d, t: calls.append(t))
    assert calls[-1] == 1  # one tile of one plane, though three planes were read
    np.testing.assert_allclose(view.data[:, 0], predictor.predict(stack)[:, 2], atol=1e-6)
    np.testing.assert_allclose(predictor.predict(stack, planes=slice(1, 3)), predictor.predict(stack)[:, 1:3], atol=1e-6)


def test_training_pairs_for_a_2_5d_model_cut_the_stack_to_the_window_of_the_target_plane():
    from napari_virtual_stain.training.layer_pairs import TrainingImage, WindowRequest, training_pairs

    stack = RNG.random((6, 40, 40)).astype(np.float32)
    plane, target_stack = RNG.random((40, 40)).astype(np.float32), RNG.random((6, 40, 40)).astype(np.float32)
    image, one, every = TrainingImage(stack, "bf"), TrainingImage(plane, "dapi"), TrainingImage(target_stack, "dapi z")
    pairs = training_pairs(image, [one], z_window=WindowRequest(target_plane=4, fixed=ZWindow(3, 1)))
    np.testing.assert_array_equal(pairs.inputs[0], stack[None, 3:6])
    assert pairs.targets[0].shape == (1, 40, 40) and pairs.spatial_dims == 2 and pairs.source_planes == [4]
    # A fresh window of 3 planes for the first plane: it cannot be centred, so the target is its plane 0.
    pairs = training_pairs(image, [one], z_window=WindowRequest(planes=3, target_plane=0))
    assert pairs.z_window == ZWindow(3, 0) and pairs.source_planes == [0]
    pairs = training_pairs(image, [every], z_window=WindowRequest(fixed=ZWindow(3, 1)))
    assert pairs.inputs[0].shape == (1, 6, 40, 40) and pairs.targets[0].shape == (1, 6, 40, 40)
    assert pairs.source_planes == [1, 2, 3, 4]
    with pytest.raises(InputError, match="mix single planes and z-stacks"):
        training_pairs(image, [one, every], z_window=WindowRequest(fixed=ZWindow(3, 1)))
    with pytest.raises(InputError, match="z-stack"):
        training_pairs(TrainingImage(plane, "bf"), [one], z_window=WindowRequest(fixed=ZWindow(3, 1)))
