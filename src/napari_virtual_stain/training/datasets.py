"""Training pairs from arrays: normalised random crops, augmentation, a validation region.

``PairedPatches`` turns co-registered (input, target) arrays into patches for training:

- inputs are channels-first (C, Y, X) or (C, Z, Y, X) and are normalised exactly as the
  Predictor will normalise them at prediction time (``engine.normalise`` with the model
  card's spec and whole-image statistics), so a trained model sees the same numbers
  in both places;
- targets are (T, ...) arrays of the same spatial shape, or lists of T per-channel arrays
  where ``None`` marks a channel not imaged for that pair. NaN pixels are missing
  pixels and an all-NaN channel is a missing channel (paper 002). Each target channel is
  scaled to [0, 1] with its own 1st/99.8th percentiles (clipped); the statistics are kept
  in ``target_stats`` for the model card;
- the validation split is by region, never by random pixels: the last ``val_fraction``
  of the Y axis of every pair (at least MIN_VAL_SIZE pixels or the patch, whichever is
  smaller; the X axis if Y is too short) is reserved for validation and training crops
  are drawn only from the rest, so no training crop ever overlaps a validation tile;
- training crops are random, flipped in Y/X and rotated by multiples of 90 degrees in
  the Y-X plane (Z is never flipped: above and below focus look different in
  brightfield), and balanced across target channels as in paper 004: crop i of a batch
  is drawn for target channel i mod K from a pair that has data for that channel;
- validation tiles are a fixed grid over the validation region, no augmentation; they
  have the patch's size, or the validation band's height where that is smaller (the
  networks are fully convolutional).

- for a 2.5D model (``z_window``, see ``models.zwindow``) inputs are (C, Z, Y, X) stacks and
  each pair becomes 2D pairs of a window of planes (as C x planes channels) and the target
  plane at its centre: a (T, Y, X) target belongs to the centre of a stack exactly one window
  deep, a (T, Z, Y, X) target gives one pair per plane whose window lies inside the stack.
  Inputs are normalised per original channel over the whole stack, as the Predictor does
  when it slides the window.

Items are ``(x, y, mask)`` float32 tensors: x (C, *patch), y (T, *patch) with missing
values set to 0, mask (T, *patch) with 1 where the target exists.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..engine.normalise import compute_stats, normalise
from ..errors import InputError
from ..models.zwindow import ZWindow
from .masks import has_data, valid_mask
from .pair_checks import names_or_defaults, validate_pairs
from .split_regions import MIN_VAL_SIZE, _grid_starts, split_regions
from .window_pairs import window_pairs

# Importable from here as they always were.
__all__ = ["DEFAULT_INPUT_NORMALISATION", "MIN_VAL_SIZE", "PairedPatches", "TARGET_NORMALISATION", "split_regions",
           "validate_pairs", "window_pairs"]

DEFAULT_INPUT_NORMALISATION = {"kind": "percentile", "low": 1.0, "high": 99.8}
# Targets: per channel to [0, 1], clipped, to match a sigmoid output.
TARGET_NORMALISATION = {"kind": "percentile", "low": 1.0, "high": 99.8, "clip": True}

# A crop drawn for target channel t is redrawn (up to this many times) when less than
# MIN_VALID_FRACTION of its pixels have a value for t; the best try is kept otherwise.
CROP_TRIES = 8
MIN_VALID_FRACTION = 0.05


class _Pair:
    """One image's normalised arrays, restricted to the region of this split."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, region: tuple[slice, ...]):
        self.x, self.y, self.mask, self.region = x, y, mask, region
        self.valid_counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
        self.fully_valid = self.valid_counts == mask[0].size

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


class PairedPatches(torch.utils.data.Dataset):
    """Normalised patches from co-registered pairs; see the module docstring.

    ``len()`` of the training split is a nominal epoch: as many crops as patches fit in
    the training regions. ``sample_batch(n)`` draws a balanced training batch.
    """

    def __init__(self, inputs: Sequence, targets: Sequence, patch: Sequence[int], spatial_dims: int,
                 augment: bool = True, split: str = "train", val_fraction: float = 0.15, seed: int = 0, *,
                 input_normalisation: dict | None = None, input_names: Sequence[str] | None = None,
                 target_names: Sequence[str] | None = None, max_val_tiles: int | None = None,
                 z_window: ZWindow | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        self.input_spec = dict(input_normalisation or DEFAULT_INPUT_NORMALISATION)
        self.z_window = z_window
        given_stats = None
        if z_window is not None:
            inputs, targets, given_stats, input_names = window_pairs(inputs, targets, z_window, self.input_spec, input_names)
        channel_lists = validate_pairs(inputs, targets, patch, spatial_dims, input_names, target_names)
        self.patch = tuple(int(p) for p in patch)
        self.spatial_dims = spatial_dims
        self.split = split
        self.augment = augment and split == "train"
        self.val_fraction = float(val_fraction)
        self.seed = seed
        self.input_names = names_or_defaults(input_names, len(inputs), "input")
        self.target_names = names_or_defaults(target_names, len(channel_lists[0]), "target")
        self.n_in = int(inputs[0].shape[0])
        self.n_out = len(self.target_names)
        self.shapes = [tuple(int(s) for s in image.shape[1:]) for image in inputs]
        self.input_stats: list[dict] = []
        self.target_stats: list[list[dict | None]] = []
        self.pairs: list[_Pair] = []
        for i, (image, channels, name) in enumerate(zip(inputs, channel_lists, self.input_names)):
            train_region, val_region = split_regions(image.shape[1:], self.patch, self.val_fraction, name)
            region = train_region if split == "train" else val_region
            stats = given_stats[i] if given_stats is not None else compute_stats(image, self.input_spec)
            self.input_stats.append(stats)
            self.target_stats.append([None if c is None or not has_data(c) else compute_stats(np.asarray(c)[None], TARGET_NORMALISATION)
                                      for c in channels])
            if region is None:
                continue
            self.pairs.append(self._load_region(image, channels, self.target_stats[-1], stats, region))

        self.rng = np.random.default_rng(seed)
        self._slot = 0
        # Balanced sampling: the channels that have training data, and per channel the
        # pairs to draw from (weighted by how many valid pixels they hold).
        self.sampled_channels = [t for t in range(self.n_out) if any(p.valid_counts[t] > 0 for p in self.pairs)]
        if split == "train" and not self.sampled_channels:
            raise InputError("None of the target layers has any value in the training region.")
        self.tiles = self._grid(max_val_tiles) if split == "val" else []

    def _load_region(self, image, channels, target_stats, stats, region) -> _Pair:
        x = normalise(np.asarray(image[(slice(None),) + region]), self.input_spec, stats)
        shape = x.shape[1:]
        y = np.zeros((self.n_out,) + shape, dtype=np.float32)
        mask = np.zeros((self.n_out,) + shape, dtype=bool)
        for t, (channel, t_stats) in enumerate(zip(channels, target_stats)):
            if t_stats is None:
                continue  # missing channel: mask stays False
            part = np.asarray(channel[region])
            mask[t] = valid_mask(part)
            y[t] = normalise(part[None], TARGET_NORMALISATION, t_stats)[0]  # NaN -> 0 there
        return _Pair(x, y, mask, region)

    def _grid(self, max_tiles: int | None) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
        tiles = []
        for index, pair in enumerate(self.pairs):
            shape = tuple(min(s, p) for s, p in zip(pair.spatial, self.patch))
            starts = [_grid_starts(s, p) for s, p in zip(pair.spatial, shape)]
            tiles += [(index, corner, shape) for corner in itertools.product(*starts)]
        if max_tiles is not None and len(tiles) > max_tiles:
            keep = np.linspace(0, len(tiles) - 1, max_tiles).round().astype(int)
            tiles = [tiles[i] for i in keep]
        return tiles

    def __len__(self) -> int:
        if self.split == "val":
            return len(self.tiles)
        volume = math.prod(self.patch)
        return max(1, sum(math.prod(p.spatial) // volume for p in self.pairs))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.split == "val":
            pair, corner, shape = self.tiles[index]
            return self._as_tensors(*self._crop(self.pairs[pair], corner, shape))
        return self._as_tensors(*self._draw(index))

    def sample_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch of ``batch_size`` crops, balanced across target channels."""
        items = [self._draw(self._slot + i) for i in range(batch_size)]
        self._slot += batch_size
        return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*[self._as_arrays(*it) for it in items]))

    def fixed_patch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Always the same patch (the first validation tile, or the first pair's corner)."""
        if self.split == "val" and self.tiles:
            return self[0]
        return self._as_tensors(*self._crop(self.pairs[0], (0,) * self.spatial_dims))

    def fixed_patch_origin(self) -> tuple[int, tuple[int, ...]]:
        """(pair index, corner) of :meth:`fixed_patch`: where a preview of it belongs."""
        if self.split == "val" and self.tiles:
            pair, corner = self.tiles[0][:2]
            return int(pair), tuple(int(c) for c in corner)
        return 0, (0,) * self.spatial_dims

    def _draw(self, slot: int):
        channel = self.sampled_channels[slot % len(self.sampled_channels)]
        pairs = [p for p in self.pairs if p.valid_counts[channel] > 0]
        weights = np.array([p.valid_counts[channel] for p in pairs], dtype=np.float64)
        pair = pairs[self.rng.choice(len(pairs), p=weights / weights.sum())]
        best, best_fraction = None, -1.0
        for _ in range(1 if pair.fully_valid[channel] else CROP_TRIES):
            corner = tuple(int(self.rng.integers(0, s - p + 1)) for s, p in zip(pair.spatial, self.patch))
            crop = self._crop(pair, corner)
            fraction = float(crop[2][channel].mean())
            if fraction > best_fraction:
                best, best_fraction = crop, fraction
            if fraction >= MIN_VALID_FRACTION:
                break
        return self._augmented(*best) if self.augment else best

    def _crop(self, pair: _Pair, corner: Sequence[int], shape: Sequence[int] | None = None):
        shape = self.patch if shape is None else shape
        index = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, shape))
        return pair.x[index], pair.y[index], pair.mask[index]

    def _augmented(self, x, y, mask):
        yx = (-2, -1)
        square = self.patch[-1] == self.patch[-2]
        k = int(self.rng.integers(0, 4)) if square else 2 * int(self.rng.integers(0, 2))
        flips = [axis for axis in yx if self.rng.random() < 0.5]
        out = []
        for a in (x, y, mask):
            if flips:
                a = np.flip(a, axis=flips)
            if k:
                a = np.rot90(a, k, axes=yx)
            out.append(a)
        return tuple(out)

    @staticmethod
    def _as_arrays(x, y, mask):
        return (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32),
                np.ascontiguousarray(mask, dtype=np.float32))

    def _as_tensors(self, x, y, mask):
        return tuple(torch.from_numpy(a) for a in self._as_arrays(x, y, mask))

    def region_of(self, pair_index: int) -> tuple[slice, ...] | None:
        """The spatial region of pair ``pair_index`` used by this split (None: not used)."""
        train, val = split_regions(self.shapes[pair_index], self.patch, self.val_fraction)
        return train if self.split == "train" else val

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the data, for the model card."""
        coverage = {name: sum(1 for stats in self.target_stats if stats[t] is not None)
                    for t, name in enumerate(self.target_names)}
        return {"pairs": len(self.shapes), "shapes": [list(s) for s in self.shapes],
                "input_names": self.input_names, "target_names": self.target_names,
                "pairs_with_target": coverage, "patch": list(self.patch),
                "val_fraction": self.val_fraction, "split_by": "region (last part of the Y axis)",
                **({"z_window": {"planes": self.z_window.planes, "centre": self.z_window.centre}} if self.z_window else {})}

    def get_state(self) -> dict:
        """The sampling state, JSON-able, so a resumed run draws new crops."""
        return {"rng": json.dumps(self.rng.bit_generator.state), "slot": self._slot}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self._slot = int(state["slot"])
