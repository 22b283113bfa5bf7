"""The joint MAXIM imputer: random channel masking in training, one view per marker at use, and the
held-out error per marker (against the mean of the other markers) deciding whether its check counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_virtual_stain.tasks.maxim import find_imputers, impute_marker, load_imputer, load_imputers
from napari_virtual_stain.tasks.maxim_joint import JointTarget, joint_inputs
from napari_virtual_stain.tasks.maxim_qc import run_qc
from napari_virtual_stain.training.joint_imputer import (JointImputerConfig, random_masks, score_per_marker,
                                                         train_joint_imputer)

NAMES = ["A", "B", "C"]


def twin_stack(shape=(96, 96), seed=0) -> np.ndarray:
    """B is A (the same cells at another gain): imputable; C is a pattern of its own: not."""
    rng = np.random.default_rng(seed)

    def blobs():
        b = ndimage.gaussian_filter((rng.random(shape) > 0.97).astype(float), 2.0)
        return b / b.max()

    a, c = blobs(), blobs()
    planes = [1000 * a, 600 * a, 800 * c]
    return np.clip(np.stack(planes) + rng.normal(10, 2, (3,) + shape), 0, None).astype(np.uint16)


def test_random_masks_hide_some_markers_never_all_and_always_the_empty_ones():
    informative = np.array([True, True, True, False, True])
    masks = random_masks(200, informative, (0.15, 0.9), np.random.default_rng(0))
    assert (masks[:, 3] == 1).all()  # no signal: always hidden
    hidden = masks[:, informative].sum(axis=1)
    assert hidden.min() >= 1 and hidden.max() <= informative.sum() - 1
    assert len(set(map(tuple, masks))) > 5  # different markers hidden in different samples


class _Echo(torch.nn.Module):
    """Returns the first half of its input (the marker planes) or the second (the mask planes)."""

    def __init__(self, half):
        super().__init__()
        self.half, self.dummy = half, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = x.shape[1] // 2
        return x[:, :c] if self.half == 0 else x[:, c:]


def test_a_marker_view_hides_its_marker_and_inputs_fed_as_zeros():
    x = torch.rand(1, 3, 8, 8) + 0.1  # the other markers of a 4-marker panel, target 1 left out
    x[:, 2] = 0  # a failed marker fed as zeros
    values = JointTarget(_Echo(0), target=1, n_markers=4)(x)
    masks = JointTarget(_Echo(1), target=1, n_markers=4)
    assert torch.all(values == 0)  # the target's own value never reaches the network
    assert torch.all(masks(x) == 1)
    full_masks = masks.net(torch.cat([torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)], 1))
    assert full_masks.shape == (1, 4, 8, 8)
    planes = joint_inputs(np.ones((4, 2, 2), np.float32), np.array([False, True, False, True]))
    assert planes[:4, 0, 0].tolist() == [1, 0, 1, 0] and planes[4:, 0, 0].tolist() == [0, 1, 0, 1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("joint")
    config = JointImputerConfig(minutes=None, steps=150, patch=32, batch_size=4, depth=2, base=8, max_width=16,
                                device="cpu", mask_share=(0.3, 0.7))
    return folder, train_joint_imputer(twin_stack(), NAMES, folder, config=config), config


def test_the_held_out_error_per_marker_decides_whether_its_check_counts(trained):
    folder, result, _ = trained
    per = result.per_marker
    # B is its twin A at another gain: the imputer must beat the mean of the other markers there
    assert per["B"]["imputer"]["mae"] < per["B"]["bl_mean"]["mae"] and per["B"]["counts"]
    # C shares nothing with A and B: nothing to impute it from, its check does not count
    assert not per["C"]["counts"]
    assert result.card.scores["heldout_region"]["start"][0] == 96 - round(96 * 0.2)
    views = load_imputers(folder)
    assert set(views) == set(NAMES) and views["B"][1].scores["counts"] and not views["C"][1].scores["counts"]
    assert find_imputers(folder)["B"].name == "joint-imputer.pt"


def test_scores_follow_the_imputer_not_the_name(trained):
    _, result, config = trained
    from napari_virtual_stain.training.joint_imputer import _normalised

    class Copy(torch.nn.Module):  # imputes every marker as marker A: right for B (its twin), wrong for C
        size_multiple = 1

        def forward(self, x):
            return x[:, :1].expand(-1, 3, -1, -1) + x[:, 3:4].expand(-1, 3, -1, -1) * 0

    stack = twin_stack(seed=3)
    scores = score_per_marker(Copy(), result.card, _normalised(stack), slice(60, 96), config)
    assert scores["B"]["counts"] and not scores["C"]["counts"]


def test_qc_with_the_joint_imputer_flags_a_blanked_area_where_the_check_counts(trained):
    folder, _, _ = trained
    stack = twin_stack(seed=5)
    stack[1, 20:60, 20:60] = 10  # B blanked (background level) over a 40x40 area
    report = run_qc(stack, NAMES, load_imputers(folder), device="cpu", training_free=False)
    b = report.markers["B"]
    assert b.flagged and b.regions
    box = b.regions[0]
    assert box.y0 < 60 and box.y1 > 20 and box.x0 < 60 and box.x1 > 20
    c = report.markers["C"]
    assert not c.assessable and any("training-free checks still judge it" in r for r in c.reasons)
    # one-marker actions use the same joint file
    model, card = load_imputer(folder, "B")
    assert card.input_channels == ["A", "C"] and impute_marker(model, card, stack, NAMES, device="cpu").data.shape == (96, 96)


def test_a_non_finite_step_of_the_joint_imputer_is_skipped_and_counted(monkeypatch):
    """The joint imputer steps through the Trainer's guard: a NaN loss never reaches the weights."""
    from napari_virtual_stain.training import joint_imputer

    built = {}

    def poisoned(architecture, arch_args):
        from napari_virtual_stain.models.factory import build_model

        net = build_model(architecture, arch_args)
        built["before"] = {k: v.clone() for k, v in net.state_dict().items()}
        net.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        built["net"] = net
        return net

    monkeypatch.setattr(joint_imputer, "build_model", poisoned)
    config = JointImputerConfig(minutes=None, steps=3, patch=32, batch_size=2, depth=2, base=4, max_width=8,
                                device="cpu")
    result = train_joint_imputer(twin_stack((64, 64)), NAMES, None, config=config)
    assert result.card.training["skipped_steps"] == 3 and result.card.training["final_loss"] is None
    after = built["net"].state_dict()
    assert all(torch.equal(built["before"][k], after[k]) for k in after if after[k].dtype.is_floating_point
               and "running" not in k)  # batch-norm running statistics move in forward, not in the step
