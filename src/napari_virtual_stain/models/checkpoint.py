"""One ``.pt`` file per model: ``{"format": FORMAT, "card": {...}, "state_dict": {...}}``.

Loading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain data
only and can never run code. Saving writes a temporary file next to the target and
renames it into place, so a crash during a save never corrupts the previous file.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, plain_text
from ..io.outputs import atomic_file
from .card import ModelCard
from .factory import build_model, plan_model, upgrade_state

FORMAT = "napari-virtual-stain/1"


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, card: ModelCard) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_torch_save({"format": FORMAT, "card": card.to_dict(), "state_dict": state}, path)


def atomic_torch_save(payload, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # plain open(): the usual permissions
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())  # a model must survive a power cut right after its rename
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelCard, dict]:
    """Read card and weights without building the network."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"There is no model file at {path}.")
    try:
        with warnings.catch_warnings():  # torch's remarks on a foreign pickle's protocol: the error below says it
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's own text is a page on weights_only; one sentence instead
        raise CheckpointError(
            f"{path.name} is not a readable napari-virtual-stain model: it is corrupt, or it holds Python "
            "objects that would have to run code to load, which is never done."
        ) from err
    except Exception as err:  # torch raises many types for junk (struct.error, RuntimeError, EOFError, ...)
        first = plain_text(err, 200) or type(err).__name__
        raise CheckpointError(
            f"{path.name} is not a readable napari-virtual-stain model (corrupt or truncated): {first}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is a PyTorch file but not a napari-virtual-stain model "
            f"(expected format {FORMAT!r}); export it with its card first."
        )
    card = ModelCard.from_dict(payload.get("card"))
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} holds no weights.")
    return card, state


def _check_state_fits(name: str, planned: torch.nn.Module, state: dict) -> None:
    """Compare the card's network (built on the meta device) with the stored weights, name by
    name and shape by shape, before any memory is spent on the real network."""
    expected = {k: tuple(v.shape) for k, v in planned.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"The weights in {name} do not fit the architecture its card names "
                              f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {detail}).")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise CheckpointError(f"The weights in {name} do not fit the architecture its card names: {key} "
                                  f"is {stored[key]} in the file but {shape} in the network.")


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelCard]:
    """Build the network named by the card and load its weights (eval mode, on the CPU)."""
    card, state = read_checkpoint(path)
    state = upgrade_state(card.architecture, state)
    _check_state_fits(Path(path).name, plan_model(card.architecture, card.arch_args), state)
    model = build_model(card.architecture, card.arch_args)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"The weights in {Path(path).name} do not fit the architecture its card names: "
            f"{plain_text(err, 200)}"
        ) from err
    model.eval()
    return model, card
