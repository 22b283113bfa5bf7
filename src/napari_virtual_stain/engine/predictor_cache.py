"""One cache of loaded models for every dock: a second run starts at once, a re-saved model is
reloaded by itself, and only one job uses a GPU at a time.

Entries are keyed by the model's file (or folder) and its modification time, the device and
the precision, so a model saved again under the same name (Fine-tune > Save) is never served
stale, and no dock has to remember to clear anything. The cache holds a few predictors at
most (least recently used go first) and is safe to use from worker threads.

Models a task loads itself (MAXIM's imputers, read from their folder) are tagged with their
file when loaded (:func:`remember_source`); :meth:`PredictorCache.for_module` then serves
them from the same cache, keyed by that file as it was when read, so every dock's models are
released together (:meth:`PredictorCache.release`). A model built in memory (being trained)
carries no tag and gets a Predictor of its own.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from .gpu_turn import _GPU_LOCK, device_turn
from .memory import empty_device_caches
from .predictor import Predictor

MAX_ENTRIES = 3
SOURCE_ATTRIBUTE = "_virtual_stain_source"  # (file, its stamp when read, variant) on a loaded module


def file_stamp(path: Path) -> tuple:
    """What changes when a model file, or any file of a model folder, is written again."""
    if path.is_dir():
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file()))
    return (path.stat().st_mtime_ns, path.stat().st_size)


def remember_source(module: torch.nn.Module, path: str | os.PathLike, variant: str = "",
                    stamp: tuple | None = None) -> torch.nn.Module:
    """Tag ``module`` as loaded from ``path`` (``stamp``: the file's, taken before reading it);
    ``variant`` tells apart modules built from one file (the joint imputer's view of each marker)."""
    path = Path(path).resolve()
    object.__setattr__(module, SOURCE_ATTRIBUTE, (str(path), stamp if stamp is not None else file_stamp(path), str(variant)))
    return module


def _args_key(predictor_args: dict) -> tuple:
    return tuple(sorted((k, None if v is None else tuple(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in predictor_args.items()))


class PredictorCache:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: str | os.PathLike, device: str = "auto", precision: str = "auto", *,
            resolve: Callable[[str], Path] | None = None,
            load: Callable[[str], tuple] | None = None, **predictor_args) -> Predictor:
        """The predictor of ``model`` (a name or path) on ``device`` at ``precision``.

        ``resolve`` turns the name into its file or folder (default: the model registry's, for
        every kind of model); ``load`` builds ``(module, card)`` from the name (default:
        ``registry.load_model``); ``predictor_args`` (tile, overlap, batch_size) go to the Predictor.
        """
        from ..models.registry import load_model, model_location

        resolve = resolve or model_location
        load = load or load_model
        path = Path(resolve(model)).resolve()
        key = (str(path), file_stamp(path), str(device), str(precision), _args_key(predictor_args))
        return self._get(key, lambda: load(str(model)), predictor_args)

    def for_module(self, module: torch.nn.Module, card, device: str = "auto", precision: str = "auto",
                   **predictor_args) -> Predictor:
        """The predictor of an already loaded ``module``: from the cache when it was tagged with
        its file (:func:`remember_source`), else a new one (a model that lives in memory only)."""
        source = getattr(module, SOURCE_ATTRIBUTE, None)
        if source is None:
            return Predictor(module, card, device=device, precision=precision, **predictor_args)
        path, stamp, variant = source
        key = (path, stamp, str(device), str(precision), _args_key(predictor_args) + (("variant", variant),))
        return self._get(key, lambda: (module, card), predictor_args)

    def _get(self, key: tuple, load: Callable[[], tuple], predictor_args: dict) -> Predictor:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        module, card = load()
        predictor = Predictor(module, card, device=key[2], precision=key[3], **predictor_args)
        with self._lock:
            stale = [k for k in self._entries if k[0] == key[0] and k[1] != key[1]]  # an older file version
            for k in stale:
                del self._entries[k]
            self._entries[key] = predictor
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return predictor

    def release(self) -> None:
        """Forget every loaded model and give the GPU memory they held back."""
        with self._lock:
            self._entries.clear()
        empty_device_caches()

    def __len__(self) -> int:
        return len(self._entries)


# The one cache the docks share.
SHARED = PredictorCache()

# The GPU turn is engine.gpu_turn's (Predictor.predict and Trainer.run take it too); importable from here.
__all__ = ["MAX_ENTRIES", "PredictorCache", "SHARED", "device_turn", "remember_source", "_GPU_LOCK"]
