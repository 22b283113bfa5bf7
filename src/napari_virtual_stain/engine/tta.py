"""Test-time augmentation: predict a tile under the symmetries of the image plane and average.

A microscope image has no preferred orientation in Y-X (flipped or turned a quarter, it is
still a plausible image), but a trained network is only approximately equivariant: its
answers for a turned tile, turned back, differ a little. Averaging over the eight
symmetries of the square (the dihedral group: four quarter turns, each with and without a
mirror) cancels part of that error; the Predictor does it per batch of tiles, before
blending, so tiling and blending are unchanged.

Only Y-X moves. Z is never flipped: above and below focus look different in a brightfield
focal series (the contrast of a thin object changes sign through focus), so a z-mirrored
stack is not a plausible stack; the planes of a 2.5D window stay in order for the same reason.

A quarter turn swaps the tile's Y and X sizes. Where a network accepts only its own tile
shape (a non-square tile of a network without ``size_multiple``, a bioimage.io package with
fixed sizes), only the four transforms that keep the shape are used: identity, the two
mirrors and the half turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

YX = (-2, -1)


@dataclass(frozen=True)
class PlaneTransform:
    """Mirror X (when ``mirror``), then turn ``quarter_turns`` times counter-clockwise in Y-X."""

    quarter_turns: int = 0
    mirror: bool = False

    def apply(self, batch: np.ndarray) -> np.ndarray:
        """The transformed (N, C, ..., Y, X) batch, C-contiguous (what a network wants)."""
        out = np.flip(batch, axis=-1) if self.mirror else batch
        if self.quarter_turns % 4:
            out = np.rot90(out, self.quarter_turns, axes=YX)
        return np.ascontiguousarray(out)

    def invert(self, batch: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply` on a network's output for the transformed batch."""
        out = np.rot90(batch, -self.quarter_turns, axes=YX) if self.quarter_turns % 4 else batch
        return np.flip(out, axis=-1) if self.mirror else out

    def tile_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The spatial shape of a tile of ``shape`` after this transform."""
        if self.quarter_turns % 2:
            return tuple(shape[:-2]) + (shape[-1], shape[-2])
        return tuple(shape)


IDENTITY = PlaneTransform()


def plane_transforms(quarter_turns: bool = True) -> list[PlaneTransform]:
    """The eight symmetries of the square (identity first), or the four that keep a rectangle."""
    turns = (0, 1, 2, 3) if quarter_turns else (0, 2)
    return [PlaneTransform(k, mirror) for mirror in (False, True) for k in turns]
