"""Batch sources: where the Trainer's training batches come from, as public objects.

The Trainer draws every batch through ``trainer.next_batch()`` from ``trainer.train_data``:
by default a ``datasets.PairedPatches`` made from (input, target) pairs, with a validation
region of its own. ``Trainer(model, card, (), (), config, batches=source)`` trains from any
``BatchSource`` instead; such a run has no validation split (``config.val_fraction`` must
be 0: the caller scores the model afterwards) and the network input is whatever the step
strategy makes of the source's ``x`` (masked imputation doubles the channels, for one).

Built in: ``StackPatches``, random crops of one channels-first stack that is its own target,
what ``strategies.MaskedImputation`` trains on (the joint MAXIM imputer).
"""

from __future__ import annotations

import json
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class BatchSource(Protocol):
    """What the Trainer needs from its training data."""

    n_in: int  # channels of x
    n_out: int  # channels of y and mask (= the card's outputs)

    def __len__(self) -> int:
        """Crops in a nominal epoch (``config.epochs`` counts these)."""

    def sample_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, mask)`` float32 CPU tensors, batch first; mask 1 where the target counts."""

    def describe(self) -> dict:
        """JSON-able facts about the data, for the model card."""

    def get_state(self) -> dict:
        """The sampling state, JSON-able (saved with a resume state)."""

    def set_state(self, state: dict) -> None: ...


class StackPatches:
    """Random ``patch`` x ``patch`` crops of the first ``rows`` rows of one (C, Y, X) ``stack``
    (already in the unit the network sees), each rotated by a random multiple of 90 degrees
    and flipped in X half of the time. The target is the crop itself; the mask is 1 on the
    ``informative`` channels (those with anything to learn) and 0 on the others.

    ``rng`` may be shared with the step strategy: the joint imputer draws crops and then
    masks from one generator, as its loop always did.
    """

    def __init__(self, stack: np.ndarray, rows: int, patch: int, informative: np.ndarray,
                 rng: np.random.Generator | None = None, seed: int = 0):
        self.stack = np.asarray(stack, np.float32)
        self.rows, self.patch = int(rows), int(patch)
        self.informative = np.asarray(informative, bool)
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.n_in = self.n_out = int(self.stack.shape[0])

    def __len__(self) -> int:
        return max(1, self.rows * self.stack.shape[2] // self.patch ** 2)

    def crops(self, batch_size: int) -> np.ndarray:
        """(batch_size, C, patch, patch) augmented crops of the training rows."""
        data, patch = self.stack, self.patch
        out = np.empty((batch_size, data.shape[0], patch, patch), np.float32)
        for b in range(batch_size):
            y = int(self.rng.integers(0, self.rows - patch + 1))
            x = int(self.rng.integers(0, data.shape[2] - patch + 1))
            p = np.rot90(data[:, y:y + patch, x:x + patch], int(self.rng.integers(0, 4)), axes=(1, 2))
            out[b] = p[:, :, ::-1] if self.rng.random() < 0.5 else p
        return out

    def sample_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.crops(batch_size))
        counts = torch.from_numpy(self.informative.astype(np.float32))[None, :, None, None]
        return x, x, counts.expand_as(x).contiguous()

    def describe(self) -> dict:
        c, h, w = self.stack.shape
        return {"stack": [int(c), int(h), int(w)], "train_rows": self.rows, "patch": [self.patch, self.patch],
                "informative": [bool(v) for v in self.informative], "split_by": "region (first rows)"}

    def get_state(self) -> dict:
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])

