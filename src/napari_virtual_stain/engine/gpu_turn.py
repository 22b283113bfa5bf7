"""One GPU job at a time in this process: two docks (or a dock and a training run) on one GPU
would fight over its memory. CPU jobs never wait.

``Predictor.predict`` and ``Trainer.run`` take the turn themselves, so every path onto a GPU
(staining, DeepLIIF, MAXIM's imputation, QC and attribution, fine-tuning, imputer training)
waits for the one before it, whichever dock or script started it. The lock is re-entrant: a
workflow may hold the turn around several predictions. A job that waits for its turn still
answers its cancel event: the wait ends without the turn, and the job stops at its next check.
"""

from __future__ import annotations

import contextlib
import threading

import torch

_GPU_LOCK = threading.RLock()
# How often a waiting job looks at its cancel event.
WAIT_POLL_S = 0.2


def _device_of(target) -> torch.device:
    device = getattr(target, "device", target)
    return device if isinstance(device, torch.device) else torch.device(str(device))


@contextlib.contextmanager
def device_turn(target, cancel: threading.Event | None = None):
    """Hold the GPU while the block runs, when ``target`` (a Predictor, a Trainer, anything with a
    ``device``, or a device) is on one. Yields whether the turn is held (always True on the CPU):
    False when ``cancel`` was set while waiting, and then the block must only wind up."""
    if _device_of(target).type == "cpu":
        yield True
        return
    while not _GPU_LOCK.acquire(timeout=WAIT_POLL_S):
        if cancel is not None and cancel.is_set():
            yield False
            return
    try:
        yield True
    finally:
        _GPU_LOCK.release()
