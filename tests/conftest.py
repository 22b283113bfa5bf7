"""Shared fixtures: tiny models saved as checkpoints in a private user-model folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.factory import build_model

DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def private_settings(tmp_path, monkeypatch):
    """The docks' remembered settings live in the test's folder, never in the user's own."""
    monkeypatch.setenv("NAPARI_VIRTUAL_STAIN_SETTINGS", str(tmp_path / "settings"))


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """An empty user model folder for the test (never the real ~/.napari-virtual-stain)."""
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("NAPARI_VIRTUAL_STAIN_MODELS", str(folder))
    return folder


def tiny_unet_card(name="tiny-2d", spatial_dims=2, n_in=1, outputs=("nuclei", "membrane"), **kw) -> ModelCard:
    tile = [32] * spatial_dims if spatial_dims == 2 else [8, 32, 32]
    overlap = [8] * spatial_dims if spatial_dims == 2 else [2, 8, 8]
    return ModelCard(
        name=name, task="stain", architecture="unet",
        arch_args=dict(in_channels=n_in, out_channels=len(outputs), spatial_dims=spatial_dims,
                       depth=2, base=4, norm="none", activation="sigmoid"),
        spatial_dims=spatial_dims,
        input_channels=["brightfield"] if n_in == 1 else [f"c{i}" for i in range(n_in)],
        output_channels=list(outputs), tile=tile, overlap=overlap,
        description="a tiny random network for tests", **kw,
    )


def save_tiny_model(folder, **kw):
    card = tiny_unet_card(**kw)
    torch.manual_seed(0)
    model = build_model(card.architecture, card.arch_args)
    return save_checkpoint(folder / f"{card.name}.pt", model, card), card


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run tiny networks: waking torch's worker threads costs more than the maths
    (10-1000x on a busy 2-core machine), and results do not depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def messages(monkeypatch):
    """Every notification the docks show (errors, warnings, infos), as text, in order."""
    from napari_virtual_stain.widgets import _worker, finetune_widget, stain_widget

    said = []
    for module in (_worker, stain_widget, finetune_widget):
        for name in ("show_error", "show_info", "show_warning"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda text, said=said: said.append(str(text)))
    return said


def nan_loss_at_call(trainer, call: int) -> None:
    """Make the ``call``-th evaluation of ``trainer``'s loss (1 = the first) not finite, the others as before."""
    real_loss, calls = trainer.loss_fn, []

    def poisoned(pred, target, mask):
        calls.append(1)
        loss = real_loss(pred, target, mask)
        return loss * float("nan") if len(calls) == call else loss

    trainer.loss_fn = poisoned


def cell_counts(rng, shape, n: int, brightness: float, sigma: float = 3.0, background: float = 0.0) -> np.ndarray:
    """Poisson counts of ``n`` cell-sized spots at random places (a multiplex marker of one cell type,
    as MIBI counts it), over a ``background`` rate."""
    centres = np.zeros(shape)
    centres[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = 1
    return rng.poisson(ndimage.gaussian_filter(centres, sigma) * brightness + background)
