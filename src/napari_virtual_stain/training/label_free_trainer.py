"""The generic Trainer with label-free training batches: random scale, turns and optics.

Everything else (normalisation, region split, validation, loss, schedule, card) is the
project's :class:`~.trainer.Trainer`; only :meth:`next_batch` changes. Each crop

- comes from a pair drawn with the caller's ``pair_weights`` (so six focal planes of one
  big field do not drown a small real field or the synthetic cells; default: by area),
- at a random scale (log-uniform in ``scale``: output pixels per source pixel, so the
  model reads cells at half or twice the size it was shown),
- turned by multiples of 90 degrees and flipped,
- and its input jittered (:func:`.label_free_augment.jitter_label_free`).

Crops are drawn only from the training region of each pair (``PairedPatches.pairs``): the
validation band stays unseen, as with the plain Trainer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .label_free_augment import LabelFreeJitter, jitter_label_free, scaled_crop
from .trainer import Trainer


class LabelFreeTrainer(Trainer):
    """A 2D :class:`Trainer` whose training batches are scaled, turned and optically jittered."""

    def __init__(self, *args, pair_weights: Sequence[float] | None = None, scale: tuple[float, float] = (0.5, 2.0),
                 jitter: LabelFreeJitter = LabelFreeJitter(), **kwargs):
        super().__init__(*args, **kwargs)
        if self.card.spatial_dims != 2:
            raise ValueError("LabelFreeTrainer draws 2D crops; use the plain Trainer for 3D.")
        pairs = self.train_data.pairs
        weights = (np.asarray(pair_weights, np.float64) if pair_weights is not None
                   else np.array([p.x[0].size for p in pairs], np.float64))
        if len(weights) != len(pairs) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"pair_weights needs {len(pairs)} non-negative weights, not {list(weights)}.")
        self.pair_weights = weights / weights.sum()
        self.scale = (float(scale[0]), float(scale[1]))
        self.jitter = jitter
        # Its own generator, seeded from the run's seed: the batches are reproducible.
        self.crop_rng = np.random.default_rng(self.config.seed + 7919)

    def draw_crop(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented (x, y, mask) training crop, float32 channels first."""
        rng = self.crop_rng
        pair = self.train_data.pairs[int(rng.choice(len(self.pair_weights), p=self.pair_weights))]
        scale = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        x, y, mask = scaled_crop(pair.x, pair.y, pair.mask.astype(np.float32), tuple(self.config.patch), scale, rng)
        square = self.config.patch[0] == self.config.patch[1]  # a quarter turn of a non-square patch changes its shape
        turns, flip = int(rng.integers(4)) if square else 2 * int(rng.integers(2)), bool(rng.integers(2))
        out = []
        for a in (x, y, mask):
            a = np.rot90(a, turns, axes=(-2, -1))
            out.append(np.ascontiguousarray(np.flip(a, axis=-1) if flip else a, dtype=np.float32))
        out[0] = jitter_label_free(out[0], rng, self.jitter)
        return out[0], out[1], out[2]

    def next_batch(self):
        crops = [self.draw_crop() for _ in range(self.config.batch_size)]
        return tuple(torch.from_numpy(np.stack(parts)).to(self.device) for parts in zip(*crops))
