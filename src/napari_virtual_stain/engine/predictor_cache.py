"""One cache of loaded models for every dock: a second run starts at once, a re-saved model is
reloaded by itself, and only one job uses a GPU at a time.

Entries are keyed by the model's file (or folder) and its modification time, the device and
the precision, so a model saved again under the same name (Fine-tune > Save) is never served
stale, and no dock has to remember to clear anything. The cache holds a few predictors at
most (least recently used go first) and is safe to use from worker threads.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from .gpu_turn import _GPU_LOCK, device_turn
from .predictor import Predictor

MAX_ENTRIES = 3


def _stamp(path: Path) -> tuple:
    """What changes when a model file, or any file of a model folder, is written again."""
    if path.is_dir():
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file()))
    return (path.stat().st_mtime_ns, path.stat().st_size)


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
        extra = tuple(sorted((k, None if v is None else tuple(v) if isinstance(v, (list, tuple)) else v)
                             for k, v in predictor_args.items()))
        key = (str(path), _stamp(path), str(device), str(precision), extra)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        module, card = load(str(model))
        predictor = Predictor(module, card, device=device, precision=precision, **predictor_args)
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
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __len__(self) -> int:
        return len(self._entries)


# The one cache the docks share.
SHARED = PredictorCache()

# The GPU turn is engine.gpu_turn's (Predictor.predict and Trainer.run take it too); importable from here.
__all__ = ["MAX_ENTRIES", "PredictorCache", "SHARED", "device_turn", "_GPU_LOCK"]
