"""Training pairs from what the user picked, whichever door it came through.

The Fine-tune dock picks napari layers, ``virtual-stain train`` reads files; both describe
each picked image as a :class:`TrainingImage` and get their pairs from
:func:`training_pairs`, so channel names, colour handling and the 2D/3D decision are made
once and a model's card does not depend on the door:

- a grey image is one channel, named after the layer or file;
- a colour (RGB/RGBA) input gives the channels ``R, G, B`` (an alpha channel is dropped);
  a colour target is used as grey (the mean of its colours: DeepLIIF's panels render grey
  stains in colour), named after the layer or file;
- a multi-channel file (channels first, with ``channel_names``) gives its channels;
- a 2D model learns from every plane of a stack (each plane is a pair); a 3D model from
  the whole stack. Targets are stacked channel-wise; NaN is a missing pixel (masked out
  of the loss, paper 002). Shapes that do not match are refused with a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .defaults import rgb_channel_names


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _size(spatial) -> str:
    return _shape(spatial) + (" (ZxYxX)" if len(spatial) == 3 else "")


@dataclass
class TrainingImage:
    """One picked image: ``data`` in napari's layout ((Z,) Y, X grey, or Y, X, 3|4 with
    ``rgb``) or, with ``channel_names``, channels first ((C, [Z,] Y, X), a multi-channel file)."""

    data: Any
    name: str
    rgb: bool = False
    channel_names: Sequence[str] | None = None

    def channels(self, role: str) -> tuple[np.ndarray, list[str]]:
        """(C, [Z,] Y, X) float32 and the channel names, for an ``"input"`` or a ``"target"``."""
        data = np.asarray(self.data, dtype=np.float32)
        if self.rgb:
            if data.ndim < 3 or data.shape[-1] not in (3, 4):
                raise InputError(f"The colour image '{self.name}' must have 3 or 4 colour samples (Y, X, 3), "
                                 f"not {_shape(data.shape)}.")
            colours = np.moveaxis(data[..., :3], -1, 0)
            if role == "target":
                return colours.mean(axis=0)[None], [self.name]
            return colours, rgb_channel_names(3)
        if self.channel_names is not None:
            names = list(self.channel_names)
            if len(names) != data.shape[0]:
                names = [f"{self.name} {i + 1}" for i in range(data.shape[0])]
            return data, names
        return data[None], [self.name]


@dataclass
class TrainingPairs:
    inputs: list  # per pair (C, ...)
    targets: list  # per pair (T, ...)
    input_names: list[str]
    target_names: list[str]
    spatial_dims: int  # of the model that trains on them


def data_dims(image: TrainingImage, z_as_channels: bool = False) -> int:
    """2 for a plane, 3 for a z-stack (after ``z_as_channels`` folds the planes into channels)."""
    x, _ = image.channels("input")
    return 2 if z_as_channels or x.ndim == 3 else x.ndim - 1


def training_pairs(image: TrainingImage, targets: Sequence[TrainingImage], spatial_dims: int | None = None,
                   z_as_channels: bool = False) -> TrainingPairs:
    """The (input, target) pairs for a ``spatial_dims`` model (None: the data's own, 3 for a stack).

    ``z_as_channels`` feeds the planes of an input stack to a 2D model as channels (a
    brightfield focal series): channels "<name> z0", "<name> z1", ...
    """
    if not targets:
        raise InputError("Choose at least one target layer (the real stain the model should learn).")
    x, input_names = image.channels("input")
    if x.size == 0:
        raise InputError(f"The input '{image.name}' is empty.")
    if z_as_channels and x.ndim == 4:
        c, z = x.shape[:2]
        x = x.reshape((c * z,) + x.shape[2:])
        input_names = [f"{n} z{k}" for n in input_names for k in range(z)]
    if x.ndim not in (3, 4):
        raise InputError(f"The input '{image.name}' has shape {_shape(np.shape(image.data))}; "
                         "a plane or z-stack is needed.")
    spatial = tuple(x.shape[1:])
    dims = spatial_dims or len(spatial)
    ys, target_names = [], []
    for target in targets:
        y, names = target.channels("target")
        if tuple(y.shape[1:]) != spatial:
            raise InputError(f"The target layer '{target.name}' is {_size(y.shape[1:])} but the input is "
                             f"{_size(spatial)}: pairs must have the same shape.")
        ys.append(y)
        target_names += names
    y = np.concatenate(ys)
    if len(spatial) == 2 and dims == 3:
        kind = "single colour image" if image.rgb else "single plane"
        raise InputError(f"A 3D model needs a z-stack, but '{image.name}' is a {kind}.")
    if len(spatial) == 3 and dims == 2:  # a stack for a 2D model: every plane is a pair
        inputs, pairs = [x[:, z] for z in range(spatial[0])], [y[:, z] for z in range(spatial[0])]
    else:
        inputs, pairs = [x], [y]
    return TrainingPairs(inputs, pairs, input_names, target_names, dims)
