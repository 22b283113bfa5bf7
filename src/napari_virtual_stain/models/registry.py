"""Where models live: bundled with the package, or in the user's model folder.

A model is named by its file stem (``demo-2d-nuclei-membrane``) or given as a path.
User models shadow bundled ones of the same name, so a fine-tuned copy saved under
the same name is the one used. The user folder is ``$NAPARI_VIRTUAL_STAIN_MODELS`` or
``~/.napari-virtual-stain/models``.
"""

from __future__ import annotations

import inspect
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .card import ModelCard
from .checkpoint import load_checkpoint, read_checkpoint

BUNDLED_DIR = Path(__file__).parent / "bundled"
USER_DIR_ENV = "NAPARI_VIRTUAL_STAIN_MODELS"


def user_model_dir() -> Path:
    return Path(os.environ.get(USER_DIR_ENV) or Path.home() / ".napari-virtual-stain" / "models")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    source: str  # "bundled" | "user"
    card: ModelCard | None  # None when the file could not be read
    problem: str = ""  # why the card could not be read


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def list_models(task: str | None = None) -> list[ModelEntry]:
    """Every model we can find, user models first; unreadable files are listed with their problem."""
    entries: dict[str, ModelEntry] = {}
    for source, folder in (("bundled", BUNDLED_DIR), ("user", user_model_dir())):
        for path in _files(folder):
            if path.name.endswith(".state.pt"):  # a trainer's resume state, not a model
                continue
            try:
                card = _read_card(path)
                entries[path.stem] = ModelEntry(path.stem, path, source, card)
            except CheckpointError as err:
                entries[path.stem] = ModelEntry(path.stem, path, source, None, str(err))
    result = sorted(entries.values(), key=lambda e: (e.source != "user", e.name))
    if task is not None:
        result = [e for e in result if e.card is not None and e.card.task == task]
    return result


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A model name (user folder first, then bundled) or an existing file path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".pt" and candidate.is_file():
        return candidate
    name = str(name_or_path)
    for folder in (user_model_dir(), BUNDLED_DIR):
        path = folder / f"{name}.pt"
        if path.is_file():
            return path
    known = ", ".join(e.name for e in list_models()) or "none"
    raise CheckpointError(f"There is no model called {name!r} (known models: {known}).")


_CARDS: dict[tuple, ModelCard] = {}  # (path, mtime) -> card: listing models keeps no weights in memory


def _read_card(path: Path) -> ModelCard:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _CARDS:
        _CARDS[key] = read_checkpoint(path)[0]
    return _CARDS[key]


def load_model(name_or_path: str | os.PathLike) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model by name or path. Each call returns a fresh module (callers may move it)."""
    return load_checkpoint(resolve_model(name_or_path))


# Widgets subscribe to hear when a model is saved (a plain callback list: no Qt here). Bound
# methods are held weakly, so a closed dock is not kept alive by its subscription.
_LISTENERS: list = []


def _ref(callback):
    return weakref.WeakMethod(callback) if inspect.ismethod(callback) else (lambda: callback)


def subscribe(callback) -> None:
    """Call ``callback()`` whenever a model is added or replaced through :func:`notify_models_changed`."""
    _LISTENERS.append(_ref(callback))


def unsubscribe(callback) -> None:
    for ref in list(_LISTENERS):
        if ref() == callback:
            _LISTENERS.remove(ref)


def notify_models_changed() -> None:
    for ref in list(_LISTENERS):
        callback = ref()
        if callback is None:  # its widget was garbage-collected
            _LISTENERS.remove(ref)
            continue
        try:
            callback()
        except RuntimeError:  # a widget whose Qt object is gone
            _LISTENERS.remove(ref)
