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
        card = read_checkpoint(path)[0]  # the weights read with it are dropped here
        for old in [k for k in _CARDS if k[0] == key[0]]:  # an earlier version of the same file
            _CARDS.pop(old, None)
        _CARDS[key] = card
    return _CARDS[key]


CHECKPOINT, BIOIMAGEIO, DEEPLIIF_RELEASE = "checkpoint", "bioimageio", "deepliif-release"


def model_kind(name_or_path: str | os.PathLike) -> str:
    """What a ``--model`` value is: our checkpoint (a name or a .pt), a bioimage.io package
    (folder, its rdf.yaml/bioimageio.yaml, or .zip) or a DeepLIIF release folder.

    The one place that decides it, from the files alone (nothing is loaded); a folder or
    file that is none of them is refused with a sentence.
    """
    from .bioimageio_package import DESCRIPTION_FILES, is_package
    from .deepliif_official import is_release_folder

    path = Path(name_or_path).expanduser()
    if not path.exists() or (path.is_file() and path.suffix == ".pt"):
        return CHECKPOINT
    if is_package(path):
        return BIOIMAGEIO
    if is_release_folder(path):
        return DEEPLIIF_RELEASE
    if path.is_dir():
        raise CheckpointError(f"The folder {path.name} is not a DeepLIIF release (it has neither train_opt.txt nor "
                              "G*.pt networks: a release holds G1.pt..G4.pt, G51.pt..G55.pt and train_opt.txt) "
                              f"nor a bioimage.io package (it has no {' or '.join(DESCRIPTION_FILES)}).")
    if path.suffix.lower() in (".zip", ".yaml", ".yml"):
        raise CheckpointError(f"{path.name} is not a bioimage.io package: it is not, and does not hold, "
                              f"a {' or '.join(DESCRIPTION_FILES)} description.")
    return CHECKPOINT  # resolve_model says what is wrong with it


def model_location(name_or_path: str | os.PathLike) -> Path:
    """The file or folder that holds a model of any kind (what changes when it is saved again)."""
    if model_kind(name_or_path) == CHECKPOINT:
        return resolve_model(name_or_path)
    return Path(name_or_path).expanduser()


def load_model(name_or_path: str | os.PathLike, weight_format: str | None = None) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model by name or path (see :func:`model_kind`). Each call returns a fresh module.

    ``weight_format`` picks a bioimage.io package's weights (torchscript, pytorch_state_dict,
    onnx); by default the first usable one offline.
    """
    kind = model_kind(name_or_path)
    if kind == BIOIMAGEIO:
        from .bioimageio_package import load_package

        return load_package(name_or_path, weight_format)
    if kind == DEEPLIIF_RELEASE:
        from .deepliif_official import load_release_folder

        return load_release_folder(name_or_path)
    return load_checkpoint(resolve_model(name_or_path))


def model_card(name_or_path: str | os.PathLike) -> ModelCard:
    """The card of a model without loading its network (a bioimage.io package's is built from its description)."""
    kind = model_kind(name_or_path)
    if kind == BIOIMAGEIO:
        from .bioimageio_package import package_card

        return package_card(name_or_path)
    if kind == DEEPLIIF_RELEASE:
        from .deepliif_official import release_card

        return release_card(name_or_path)
    return _read_card(resolve_model(name_or_path))


def program_notice(name_or_path: str | os.PathLike) -> str | None:
    """A sentence to show before loading a model whose files are programs (TorchScript, Python
    architecture code), or None for our own checkpoints, which hold only numbers."""
    kind = model_kind(name_or_path)
    if kind == BIOIMAGEIO:
        from .bioimageio_package import package_notice

        return package_notice(name_or_path)
    if kind == DEEPLIIF_RELEASE:
        return (f"{Path(name_or_path).name} holds DeepLIIF's TorchScript networks: TorchScript is a program, "
                "not plain numbers; load only folders you trust.")
    return None


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
