"""One forward pass per batch of tiles, and what keeps it going on a GPU: the Predictor's engine room.

``BatchRunner.submit(batch)`` queues a batch (N, C, *tile) through the model and returns a
function that gives its float32 output when called; between the two the work may be in flight
on the device (``engine.transfer``: pinned memory, a copy stream, events on CUDA; plain
synchronous calls on the CPU and MPS). Around that pass it:

- halves a batch that runs out of device memory (CUDA's ``torch.OutOfMemoryError`` and MPS's
  "MPS backend out of memory" ``RuntimeError`` alike, ``memory.is_out_of_memory``), runs it
  in parts of the smaller size, and keeps that size for the rest of the run; one tile that
  does not fit is an ``InputError`` sentence;
- checks that a pass under bf16/fp16 autocast gave finite values (the check is reduced on the
  device, so one byte crosses to the host); a pass that did not (an overflow of the reduced
  precision's range) is redone in fp32 and every later pass runs in fp32 (one already queued in
  the reduced precision is redone as well), and ``fallback_note()`` gives the sentence saying so;
- on CUDA, when no batch size was asked for, sizes batches from memory: the first batch is a
  single tile, its peak memory (``torch.cuda.max_memory_allocated`` over the pass) is the cost
  of a tile, and later batches take as many tiles as fit in the free device memory
  (``memory.batch_for_memory``), never more than the Predictor's default (``cap``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from .device import autocast_context
from .memory import batch_for_memory, cuda_free_bytes, is_out_of_memory, release_cached_memory
from .transfer import Transfer

Pending = Callable[[], np.ndarray]


def sizes_from_memory(device: torch.device, requested: int | None, batch_independent: bool, default: int) -> bool:
    """Whether the batch size is measured: on CUDA, when none was asked for and batches can
    hold more than one tile (a batch-dependent network always runs one by one)."""
    return device.type == "cuda" and requested is None and batch_independent and default > 1


class CudaPeakProbe:
    """Peak device memory of one pass, and the memory still free (CUDA's allocator statistics)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._base = 0

    def start(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int:
        # The allocator counts when work is queued, not when it runs: no synchronisation needed.
        return int(torch.cuda.max_memory_allocated(self.device) - self._base)

    def free_bytes(self) -> int:
        return cuda_free_bytes(self.device)


class BatchRunner:
    """Run batches of tiles through ``model`` on ``transfer.device``; see the module docstring.

    ``check(x, y)`` raises when the model's output ``y`` for input ``x`` is not what its card
    promises. ``probe`` (a ``CudaPeakProbe`` or a stand-in with the same methods) turns on
    sizing batches from memory, with ``batch_size`` as the cap.
    """

    def __init__(self, model: torch.nn.Module, transfer: Transfer, precision: str,
                 memory_format: torch.memory_format, check: Callable[[torch.Tensor, object], None],
                 batch_size: int, probe=None):
        self.model = model
        self.transfer = transfer
        self.device = transfer.device
        self.precision = precision
        self.memory_format = memory_format
        self.check = check
        self.batch_size = int(batch_size)
        self.probe = probe
        self.fallen_from: str | None = None  # the reduced precision that gave non-finite values, once it did

    def next_batch_size(self) -> int:
        """Tiles in the next batch: one while the memory probe has not measured a tile yet."""
        return 1 if self.probe is not None else self.batch_size

    def host_batch(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return self.transfer.host_batch(shape, dtype)

    def submit(self, batch: np.ndarray) -> Pending:
        """Queue ``batch`` (N, C, *tile); the returned function gives its output (N, C_out, *tile)."""
        precision = self.precision
        try:
            fetched = self._pass(batch, precision)
        except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err):
                raise
            fetched = None
        if fetched is None:
            # Out of the except block: the failed pass's tensors, held by the traceback, are freed by now.
            return self._halved(batch)

        def result() -> np.ndarray:
            # A pass queued in reduced precision before the switch (the look-ahead) is redone
            # too: from the batch that overflowed on, every output read is fp32's.
            if precision != "fp32" and (self.precision == "fp32" or not fetched.finite()):
                self._fall_back(precision)
                return self.submit(batch)()
            return fetched.values()
        return result

    def _halved(self, batch: np.ndarray) -> Pending:
        if len(batch) == 1:
            raise InputError("The GPU ran out of memory on a single tile; choose a smaller tile size or the CPU.")
        release_cached_memory(self.device)
        self.batch_size = max(1, min(self.batch_size, len(batch) // 2))  # remembered for the rest of the run
        parts, start = [], 0
        while start < len(batch):  # each part at the size known then (a failing first half lowers it)
            size = self.batch_size
            parts.append(self.submit(batch[start:start + size]))
            start += size
        return lambda: np.concatenate([part() for part in parts])

    def _fall_back(self, precision: str) -> None:
        if self.precision == "fp32":
            return  # an earlier pass already switched
        self.precision = "fp32"
        self.fallen_from = precision

    def fallback_note(self, earlier: bool = False) -> str | None:
        """The sentence for a run's warnings once a reduced precision failed (None before):
        for the run it happened in, or (``earlier``) for a later run, which is fp32 throughout."""
        if self.fallen_from is None:
            return None
        if earlier:
            return (f"This run used fp32: on an earlier run the model gave non-finite values in "
                    f"{self.fallen_from} (the reduced precision overflowed).")
        return (f"The model gave non-finite values in {self.fallen_from} (the reduced precision overflowed), "
                "so that batch was redone in fp32 and the rest ran in fp32.")

    def _pass(self, batch: np.ndarray, precision: str):
        probe, measuring = self.probe, self.probe is not None
        if measuring:
            probe.start()
        with torch.inference_mode():
            x = self.transfer.upload(batch)
            if self.memory_format is not torch.contiguous_format:
                x = x.contiguous(memory_format=self.memory_format)
            with autocast_context(self.device, precision):
                y = self.model(x)
            self.check(x, y)
            fetched = self.transfer.download(y, check_finite=precision != "fp32")
        if measuring:
            self.probe = None  # measured once per runner
            per_tile = probe.peak_bytes() // max(1, len(batch))
            self.batch_size = batch_for_memory(probe.free_bytes(), per_tile, self.batch_size)
        return fetched
