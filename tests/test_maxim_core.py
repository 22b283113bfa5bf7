"""MAXIM core: stack checks, model fitting, imputation through the Predictor, BL-Mean.

Also home of the helpers the other test_maxim_* files share: a tiny synthetic multiplex
stack whose markers are all the same tissue pattern at different gains, and an "oracle"
imputer whose output is a known function of its inputs (the mean of the input markers
that are present), so the QC's decision rule can be tested without training anything.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_virtual_stain.errors import CheckpointError, InputError
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.factory import register
from napari_virtual_stain.tasks.maxim import (bl_mean, check_marker_stack, check_model_fits, find_imputers,
                                              impute_marker, normalise_marker, stack_from_channels,
                                              stack_marker_stats)
from napari_virtual_stain.tasks.region import Region

MARKERS = ["DAPI", "Lap2", "CD3", "Ki67", "CK"]
GAINS = [3000, 1500, 2200, 900, 4000]


def good_stack(shape=(64, 64), seed=0) -> np.ndarray:
    """(5, Y, X) uint16: one smooth tissue pattern per marker at different gains, plus noise."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random(shape), 2.5)
    base = (base - base.min()) / (base.max() - base.min())
    planes = [g * base + rng.normal(0, 0.01 * g, shape) + 100 for g in GAINS]
    return np.clip(np.stack(planes), 0, 65535).astype(np.uint16)


@register("test_oracle_mean")
class OracleMean(torch.nn.Module):
    """Imputes the mean of the input markers that are present (not all zero in the tile)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # so .to(device) and state_dict work

    def forward(self, x):
        present = (x.abs().flatten(2).amax(-1) > 0).to(x.dtype)
        total = (x * present[:, :, None, None]).sum(1, keepdim=True)
        return (total / present.sum(1).clamp(min=1)[:, None, None, None]).clamp(0, 1)


def oracle_card(target: str, markers=MARKERS, stats=None, pcc=0.95, mae=0.03) -> ModelCard:
    return ModelCard(name=f"oracle-{target}", task="impute", architecture="test_oracle_mean", arch_args={},
                     spatial_dims=2, input_channels=[m for m in markers if m != target], output_channels=[target],
                     output_activation="none", tile=[64, 64], overlap=[8, 8],
                     scores={"val": {"pcc": pcc, "mae": mae}},
                     extra={"marker_stats": stats or {}, "dtype": "uint16"})


def oracle_imputers(stack=None, markers=MARKERS, **kw) -> dict:
    stats = stack_marker_stats(stack, markers) if stack is not None else None
    return {m: (OracleMean(), oracle_card(m, markers, stats, **kw)) for m in markers}


# ---- stack checks ---------------------------------------------------------------------

def test_single_channel_stack_is_refused_with_a_sentence():
    with pytest.raises(InputError, match="single channel"):
        check_marker_stack(good_stack()[:1], ["DAPI"])
    with pytest.raises(InputError, match="Only one marker"):
        stack_from_channels([good_stack()[0]], ["DAPI"])


def test_duplicate_marker_names_are_refused_case_insensitively():
    with pytest.raises(InputError, match="DAPI.*more than once"):
        check_marker_stack(good_stack(), ["DAPI", "Lap2", "dapi", "Ki67", "CK"])
    with pytest.raises(InputError, match="Ki67 appear"):
        check_marker_stack(good_stack(), ["DAPI", "Lap2", "Ki67", "Ki67", "CK"])


def test_wrong_number_of_names_and_3d_stacks_are_refused():
    with pytest.raises(InputError, match="4 marker names .* 5 channels"):
        check_marker_stack(good_stack(), MARKERS[:4])
    with pytest.raises(InputError, match="2D multiplex"):
        check_marker_stack(np.zeros((3, 2, 8, 8)), ["a", "b", "c"])


def test_layers_of_different_dtypes_or_sizes_are_refused():
    stack = good_stack()
    with pytest.raises(InputError, match="different pixel types.*Lap2 uint8"):
        stack_from_channels([stack[0], stack[1].astype(np.uint8)], ["DAPI", "Lap2"])
    with pytest.raises(InputError, match="differ in size"):
        stack_from_channels([stack[0], stack[1][:32]], ["DAPI", "Lap2"])
    joined, names = stack_from_channels([stack[0], stack[1]], ["DAPI", "Lap2"])
    assert joined.shape == (2, 64, 64) and names == ["DAPI", "Lap2"]


def test_a_model_for_markers_the_stack_lacks_names_them():
    card = oracle_card("Ki67", markers=["DAPI", "Lap2", "CD8", "Ki67"])
    with pytest.raises(CheckpointError, match="has no CD8"):
        check_model_fits(card, MARKERS)


def test_find_imputers_requires_imputer_checkpoints(tmp_path):
    from napari_virtual_stain.models.checkpoint import save_checkpoint

    with pytest.raises(CheckpointError, match="no marker imputers"):
        find_imputers(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="no marker imputers .1 unreadable file"):
        find_imputers(tmp_path)
    save_checkpoint(tmp_path / "ki67.pt", OracleMean(), oracle_card("Ki67"))
    save_checkpoint(tmp_path / "cd3.pt", OracleMean(), oracle_card("CD3"))
    found = find_imputers(tmp_path)
    assert {k: v.name for k, v in found.items()} == {"Ki67": "ki67.pt", "CD3": "cd3.pt"}
    save_checkpoint(tmp_path / "ki67-again.pt", OracleMean(), oracle_card("Ki67"))
    with pytest.raises(CheckpointError, match="two imputers for Ki67"):
        find_imputers(tmp_path)


# ---- imputation -----------------------------------------------------------------------

def test_imputation_picks_inputs_by_name_whatever_the_channel_order():
    stack = good_stack()
    model, card = OracleMean(), oracle_card("Ki67")
    order = [4, 2, 0, 3, 1]
    shuffled = stack[order]
    names = [MARKERS[i] for i in order]
    a = impute_marker(model, card, stack, MARKERS, device="cpu").data
    b = impute_marker(model, card, shuffled, names, device="cpu").data
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    # The oracle reproduces the shared pattern, so it matches the acquired Ki67 closely.
    assert np.corrcoef(a.ravel(), normalise_marker(stack[3]).ravel())[0, 1] > 0.95


def test_missing_inputs_are_zeroed_and_a_view_matches_the_whole_image():
    stack = good_stack()
    stack[0] = 0  # what a missing DAPI looks like to the model
    model, card = OracleMean(), oracle_card("Ki67")
    full = impute_marker(model, card, stack, MARKERS, device="cpu", missing=["Lap2"]).data
    # Lap2 zeroed and DAPI blank: the oracle averages CD3 and CK only.
    from napari_virtual_stain.engine.normalise import compute_stats, normalise
    spec = card.input_normalisation
    sub = stack[[2, 4]].astype(np.float32)
    expected = normalise(sub, spec, compute_stats(sub, spec)).mean(0).clip(0, 1)
    np.testing.assert_allclose(full, expected, atol=1e-5)
    view = impute_marker(model, card, stack, MARKERS, device="cpu", missing=["Lap2"],
                         region=Region((10, 12), (40, 50)))
    assert view.data.shape == (30, 38) and view.region.start == (10, 12)


def test_imputers_from_a_folder_share_the_docks_predictor_cache(tmp_path):
    """Each action loads its imputers again; their Predictors come from the one shared cache
    (keyed by file version and device), so they are loaded on the device once and released
    with the other docks' models. A model that lives only in memory gets its own."""
    import time

    from napari_virtual_stain.engine.predictor_cache import SHARED
    from napari_virtual_stain.models.checkpoint import save_checkpoint
    from napari_virtual_stain.tasks.maxim import imputer_predictor, load_imputer, load_imputers
    from napari_virtual_stain.tasks.maxim_qc import run_qc

    SHARED.release()
    save_checkpoint(tmp_path / "ki67.pt", OracleMean(), oracle_card("Ki67"))
    save_checkpoint(tmp_path / "cd3.pt", OracleMean(), oracle_card("CD3"))
    first = imputer_predictor(*load_imputer(tmp_path, "Ki67"), "cpu")
    again = load_imputers(tmp_path)  # another action, another load of the same files
    assert imputer_predictor(*again["Ki67"], "cpu") is first and len(SHARED) == 1
    stack = good_stack()
    run_qc(stack, MARKERS, again, device="cpu")  # the QC takes its predictors from the cache too
    assert len(SHARED) == 2 and imputer_predictor(*again["CD3"], "cpu") is not first
    model, card = OracleMean(), oracle_card("Ki67")
    assert imputer_predictor(model, card, "cpu") is not imputer_predictor(model, card, "cpu")  # in memory only
    time.sleep(0.01)
    save_checkpoint(tmp_path / "ki67.pt", OracleMean(), oracle_card("Ki67"))  # trained again
    assert imputer_predictor(*load_imputer(tmp_path, "Ki67"), "cpu") is not first
    SHARED.release()
    assert len(SHARED) == 0


def test_bl_mean_is_the_mean_of_the_normalised_inputs_without_missing_ones():
    stack = good_stack()
    card = oracle_card("Ki67")
    mean = bl_mean(stack, MARKERS, card, missing=["CK"])
    expected = np.mean([normalise_marker(stack[i]) for i in (0, 1, 2)], axis=0)
    np.testing.assert_allclose(mean, expected, atol=1e-6)
    assert normalise_marker(stack[0]).min() == 0.0 and normalise_marker(stack[0]).max() == 1.0


def test_a_one_marker_action_loads_only_that_imputer(tmp_path, monkeypatch):
    from napari_virtual_stain.models import checkpoint
    from napari_virtual_stain.models.checkpoint import save_checkpoint
    from napari_virtual_stain.tasks.maxim import load_imputer

    for m in MARKERS:
        save_checkpoint(tmp_path / f"imputer-{m}.pt", OracleMean(), oracle_card(m))
    loaded = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: loaded.append(path) or real(path))
    _, card = load_imputer(tmp_path, MARKERS[1].lower())  # names match without regard to case
    assert card.output_channels == [MARKERS[1]] and len(loaded) == 1
    with pytest.raises(InputError, match="has no imputer for Nope"):
        load_imputer(tmp_path, "Nope")
