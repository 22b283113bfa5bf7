"""Which tiles and batches a model gets: the smallest trustworthy tile, tiles fitted to the
image, the batch size, seam warnings and which test-time transforms fit (a mixin of the
``Predictor``, which holds ``model``, ``card``, ``device``, ``tile``, ``overlap``,
``tile_from_card`` and ``size_multiple``)."""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import InputError
from .tiling import fit_tile
from .tta import IDENTITY, PlaneTransform, plane_transforms

# Pixels (voxels) per batch on a GPU: 16 tiles of 512 x 512. Enough to keep a GPU busy; it is
# the cap: on CUDA the batch is sized from free memory after a one-tile probe, and on any GPU
# it halves itself if it runs out of memory.
GPU_PIXELS_PER_BATCH = 1 << 22
# On the CPU, batching pays when other programs compete for the cores: 8 tiles of 448x448
# through the 2D U-Net (bf16, channels_last, 2 threads on a busy 2-core EPYC) took 8.1 CPU s
# one by one, 5.2 in fours and 4.9 in eights, because every layer of every forward pass
# waits for all threads. With one thread (no waiting) batches gain nothing and lose ~10%.
# About a megapixel per batch keeps the gain while progress and cancel still answer within
# a second or two.
CPU_PIXELS_PER_BATCH = 1 << 20

# The smallest tile side accepted for a network that declares a size multiple m (2**depth for a
# U-Net): 4 m (its deepest level then sees 4 x 4 pixels), but no more than max(m, MIN_TILE_*),
# so networks built for one tile size (pix2pix's U-Net-256, DeepLIIF's 512) keep it. Smaller
# tiles do run, but give wrong answers without a word: the bundled 2D U-Net (depth 4, m = 16) on
# its sample reached PCC 0.90 / 0.97 against an untiled run with tiles of 16 / 32 pixels and
# 0.999 at 64 (overlap 16).
MIN_TILE_XY = 64
MIN_TILE_Z = 8
# Overlaps below these leave visible seams (bundled U-Net: max error 0.06 at 32, 0.007 at 64).
SEAM_FREE_OVERLAP_XY = 32
SEAM_FREE_OVERLAP_Z = 4


class TileRules:
    """The tile and batch decisions of the :class:`~napari_virtual_stain.engine.predictor.Predictor`."""

    def min_tile(self) -> tuple[int, ...]:
        """The smallest tile (per spatial axis) this model gives trustworthy answers with.

        A model that accepts any input size that is a multiple of ``size_multiple`` (a U-Net
        of depth d: 2**d) says so with that attribute; its tiles are fitted to the image
        (see _tile_for) but never below this.
        """
        dims = self.card.spatial_dims
        declared = getattr(self.model, "min_tile", None)  # a model may know better (bioimage.io minimum shapes)
        if declared is not None:
            return tuple(int(v) for v in (declared if isinstance(declared, (tuple, list)) else [declared] * dims))
        if not self.size_multiple:  # not one of our convolutional networks: nothing is known about its context
            return (1,) * dims
        m = self.size_multiple
        caps = (MIN_TILE_Z, MIN_TILE_XY, MIN_TILE_XY)[-dims:]
        return tuple(min(4 * m, max(m, cap)) for cap in caps)

    def _check_tile(self, tile: Sequence[int], overlap: Sequence[int]) -> None:
        for t, o in zip(tile, overlap):
            if t < 1:
                raise InputError(f"The tile size must be a positive number of pixels, not {t}.")
            if o < 0 or o >= t:
                raise InputError(f"An overlap of {o} pixels does not fit tiles of {t}: "
                                 "the overlap must be at least 0 and smaller than the tile.")
        smallest = self.min_tile()
        rule = getattr(self.model, "check_tile", None)  # a model may accept only some sizes (bioimage.io packages)
        if rule is not None:
            rule(tuple(int(t) for t in tile))
        if any(t < m for t, m in zip(tile, smallest)):
            why = f"; its size multiple is {self.size_multiple}" if self.size_multiple > 1 else ""
            raise InputError(
                f"Tiles of {'x'.join(map(str, tile))} pixels are too small for {self.card.name}: the smallest it can use "
                f"is {'x'.join(map(str, smallest))} (smaller tiles see too little context around each pixel{why}).")

    def _one_tile_per_view(self, spatial: Sequence[int], tile: tuple[int, ...]) -> tuple[int, ...]:
        """One tile along each in-plane axis no longer than the card's tile plus an overlap on either side.

        That is the current view with the context margin the tasks read around it (``overlap``
        pixels each side): fitted tiles would cut it into a 2 x 2 grid of smaller tiles (a 512 x
        512 DeepLIIF view read as 576 x 576: four tiles of 304 px, 370k pixels and a blend) where
        one tile of 576 px computes 332k pixels and gives the untiled answer, which the blend
        only approaches. Only with the card's own tile (a tile the user chose is a memory limit
        kept as given) and only in Y and X: a 3D tile's depth stays as fitted.
        """
        if not self.tile_from_card or getattr(self.model, "check_tile", None) is not None:
            return tile  # a user's tile, or a network that accepts only some sizes
        m = self.size_multiple
        planar = len(tile) - 2  # the first in-plane axis
        return tuple(t if axis < planar or n <= t or n > card + 2 * o else -(-n // m) * m
                     for axis, (n, t, card, o) in enumerate(zip(spatial, tile, self.tile, self.overlap)))

    def _quarter_turns_fit(self, tile: Sequence[int]) -> bool:
        """Whether the network accepts a tile turned a quarter (its Y and X sizes swapped)."""
        if tile[-2] == tile[-1]:
            return True
        if not self.size_multiple or getattr(self.model, "check_tile", None) is not None:
            return False  # a network that takes only its own shape (or says nothing about sizes)
        turned = tuple(tile[:-2]) + (tile[-1], tile[-2])
        return (all(t % self.size_multiple == 0 for t in tile[-2:])
                and all(t >= m for t, m in zip(turned, self.min_tile())))

    def transforms_for(self, tile: Sequence[int], tta: bool) -> list[PlaneTransform]:
        """The transforms each tile of shape ``tile`` goes through: the identity alone without TTA."""
        return plane_transforms(self._quarter_turns_fit(tile)) if tta else [IDENTITY]

    def _seam_warning(self, spatial: Sequence[int], tile: Sequence[int], overlap: Sequence[int]) -> list[str]:
        floors = (SEAM_FREE_OVERLAP_Z, SEAM_FREE_OVERLAP_XY, SEAM_FREE_OVERLAP_XY)[-len(tile):]
        thin = [o for n, t, o, f in zip(spatial, tile, overlap, floors) if n > t and o < f]
        if not thin:
            return []
        return [f"An overlap of {min(thin)} pixels between tiles leaves visible seams; "
                f"use at least {SEAM_FREE_OVERLAP_XY} (the model's default is {max(self.card.overlap)})."]

    def _choose_batch_size(self, requested: int | None) -> int:
        if not self.card.batch_independent:
            return 1  # each tile must be normalised with its own batch statistics
        if requested is not None:
            if int(requested) < 1:
                raise InputError(f"The batch size must be at least 1, not {requested}.")
            return int(requested)
        if self.device.type == "cpu":  # no gain measured beyond 8 tiles
            return max(1, min(8, CPU_PIXELS_PER_BATCH // math.prod(self.tile)))
        return max(1, min(64, GPU_PIXELS_PER_BATCH // math.prod(self.tile)))

    def _tile_for(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (tile, overlap) used on an image of ``spatial`` shape (tiles are padded up to the tile).

        Models that declare ``size_multiple`` (they accept any multiple of it) get tiles fitted
        to the image (``engine.tiling.fit_tile``): as many tiles as the card's tile needs, but
        no bigger than necessary. Other models always get exactly the card's tile.
        """
        if not self.size_multiple:
            return self.tile, self.overlap
        fitted = [fit_tile(n, t, o, self.size_multiple) for n, t, o in zip(spatial, self.tile, self.overlap)]
        # Never below the smallest trustworthy tile, unless one fitted tile covers the axis.
        tile = tuple(f if n <= f else min(t, max(f, m))
                     for n, t, f, m in zip(spatial, self.tile, fitted, self.min_tile()))
        tile = self._one_tile_per_view(spatial, tile)
        if getattr(self.model, "min_tile", None) is not None:  # a declared minimum is a hard limit: pad up to it
            tile = tuple(max(t, m) for t, m in zip(tile, self.min_tile()))
        # A fitted tile can be shorter than the overlap only where one tile covers the axis.
        return tile, tuple(min(o, t - 1) for o, t in zip(self.overlap, tile))
