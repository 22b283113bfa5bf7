"""2.5D models: a window of z planes in, the window's centre plane out.

In-silico labeling (Christiansen et al. 2018) and VisCy's 2.5D networks predict one
fluorescence plane from a few transmitted-light planes around it: the focal series carries
depth information that a single plane lacks. Such a model is a 2D model (its card says
``spatial_dims`` 2 and names the *original* input channels) whose architecture arguments
also name ``planes`` (how many) and ``centre`` (which of them is the plane predicted, 0 =
the first). Its network takes the window as channels, channel-major: for channels
a, b and 3 planes, ``a z0, a z1, a z2, b z0, b z1, b z2``.

Every plane of a stack is predicted by sliding the window along z. Near the ends of the
stack the window reaches past the first or last plane; those planes are repeated (the
only context there is), and the caller says so to the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class ZWindow:
    planes: int
    centre: int

    def __post_init__(self) -> None:
        if self.planes < 1 or not 0 <= self.centre < self.planes:
            raise InputError(f"A window of {self.planes} planes cannot be centred on its plane {self.centre}: "
                             "the centre must be one of the window's planes (0 is the first).")

    @property
    def below(self) -> int:
        """How many planes the window reaches before its centre (lower z indices)."""
        return self.centre

    @property
    def above(self) -> int:
        return self.planes - 1 - self.centre

    def indices(self, z: int, n_planes: int) -> np.ndarray:
        """Stack planes (0..n_planes-1) that make the window predicting plane ``z``; ends repeated."""
        return np.clip(np.arange(self.planes) + (int(z) - self.centre), 0, int(n_planes) - 1)

    def is_full(self, z: int, n_planes: int) -> bool:
        """True when the window around ``z`` lies inside the stack (no plane repeated)."""
        return z - self.below >= 0 and z + self.above < n_planes

    def check_stack(self, n_planes: int | None, what: str = "The image") -> None:
        """Refuse an image with fewer planes than the window (None: a single 2D plane)."""
        if n_planes is None:
            raise InputError(f"{what} is a single plane, but this 2.5D model predicts a plane from a z-stack of "
                             f"{self.planes} planes around it: give a stack of at least {self.planes} planes.")
        if n_planes < self.planes:
            raise InputError(f"{what} has {n_planes} z-plane(s), but this 2.5D model needs {self.planes} planes "
                             f"(the predicted plane and {self.planes - 1} around it): give a stack of at least "
                             f"{self.planes} planes.")

    def as_channels(self, block: np.ndarray) -> np.ndarray:
        """(C, planes, ...) -> (C * planes, ...), the network's channel order."""
        return block.reshape((block.shape[0] * block.shape[1],) + tuple(block.shape[2:]))


def z_window(card) -> ZWindow | None:
    """The z window of a 2.5D model card, or None for every other model."""
    args = card.arch_args if isinstance(card.arch_args, dict) else {}
    if card.spatial_dims != 2 or "planes" not in args:
        return None
    planes = int(args["planes"])
    return ZWindow(planes, int(args.get("centre", planes // 2)))
