"""Moving batches of tiles between host and device, and keeping the device busy while doing it.

On CUDA (``CudaTransfer``) a batch takes this path:

1. the host stacks its tiles straight into page-locked ("pinned") memory (``host_batch``), which
   the GPU's copy engine reads without a staging copy;
2. ``upload`` copies it to the device on a separate copy stream, ``non_blocking``; the compute
   stream waits for that copy (``wait_stream``) before the model reads it, and the device tensor
   is marked as used by the compute stream (``record_stream``) so the caching allocator does
   not hand its memory to another batch too early;
3. ``download`` queues the result's copy back into pinned host memory, also non-blocking, and
   records an event; only ``Fetched.values()`` (where the host reads the numbers) waits for it.

``ahead`` runs the pipeline ``lookahead`` batches ahead: batch i+1 is read from the image, cut,
normalised, stacked and its upload queued before the host waits for batch i's result, so the
host's work and the next copy overlap the current batch's compute.

On the CPU and MPS (``Transfer``) every step is the plain synchronous one the Predictor always
used: no pinning (page-locking costs time and buys nothing without a copy engine), no streams,
no look-ahead (progress and cancel then answer after every batch, as before).
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

Item = TypeVar("Item")
Handle = TypeVar("Handle")


def ahead(items: Iterable[Item], submit: Callable[[Item], Handle], lookahead: int) -> Iterator[tuple[Item, Handle]]:
    """Yield ``(item, submit(item))`` in order, having submitted up to ``lookahead`` later items first.

    With ``lookahead`` 0 each item is submitted just before it is yielded (no overlap).
    """
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) > lookahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


class Fetched:
    """A result on its way to the host: ``values()`` waits for it (on CUDA) and returns float32 numpy."""

    def __init__(self, values: torch.Tensor, finite: torch.Tensor | None, event=None):
        self._values, self._finite, self._event = values, finite, event

    def _wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()
            self._event = None

    def values(self) -> np.ndarray:
        self._wait()
        return self._values.numpy()

    def finite(self) -> bool:
        """Whether every value is finite (True when the check was not asked for)."""
        self._wait()
        return True if self._finite is None else bool(self._finite)


class Transfer:
    """The synchronous path (CPU, MPS): what the Predictor did before the CUDA pipeline existed."""

    lookahead = 0

    def __init__(self, device: torch.device):
        self.device = device

    def host_batch(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An empty host array for one batch of tiles."""
        return np.empty(shape, dtype=dtype)

    def upload(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to(self.device)

    def download(self, y: torch.Tensor, check_finite: bool) -> Fetched:
        """``y`` as float32 on the host; with ``check_finite``, also whether all of it is finite."""
        finite = torch.isfinite(y).all().cpu() if check_finite else None
        return Fetched(y.float().cpu(), finite)


class CudaTransfer(Transfer):
    """Pinned host memory, a copy stream and events (see the module docstring)."""

    lookahead = 1

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.copy_stream = torch.cuda.Stream(device=device)

    def host_batch(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        # torch's caching host allocator keeps freed pinned blocks (and waits for the copies
        # that use them), so asking for one per batch does not page-lock memory every time.
        like = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return torch.empty(shape, dtype=like, pin_memory=True).numpy()

    def upload(self, batch: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(batch)
        if not host.is_pinned():  # e.g. a TTA transform's copy of the batch
            host = host.pin_memory()
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            x = host.to(self.device, non_blocking=True)
        compute.wait_stream(self.copy_stream)  # the model's kernels start after the copy
        x.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        return x

    def download(self, y: torch.Tensor, check_finite: bool) -> Fetched:
        # One contiguous float32 copy on the device, so the copy to the host is a plain memcpy.
        y = y.float().contiguous()
        values = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
        values.copy_(y, non_blocking=True)
        finite = None
        if check_finite:  # reduced on the device: one byte crosses, not a host scan of the batch
            finite = torch.empty((), dtype=torch.bool, pin_memory=True)
            finite.copy_(torch.isfinite(y).all(), non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return Fetched(values, finite, event)


def transfer_for(device: torch.device, streams: bool = True) -> Transfer:
    """The transfer path for ``device``: the pipelined one on CUDA (unless ``streams`` is False)."""
    if device.type == "cuda" and streams:
        return CudaTransfer(device)
    return Transfer(device)
