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
  of the loss, paper 002). Shapes that do not match are refused with a sentence;
- a 2.5D model (a :class:`WindowRequest`) learns from a stack and a target plane or
  stack: :func:`window_for_pair` places its window of planes (``models.zwindow``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..models.zwindow import ZWindow
from .defaults import rgb_channel_names
from .pair_checks import layer_size_text, size_text


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
                                 f"not {size_text(data.shape)}.")
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
    z_window: ZWindow | None = None  # a 2.5D model's window (placed for these images)
    # The stack plane each pair's target belongs to, where pairs are planes of a stack (2D or
    # 2.5D model): where a preview of the pair is drawn. None: the pairs are whole images.
    source_planes: list[int] | None = None


@dataclass(frozen=True)
class WindowRequest:
    """What a 2.5D run asks of its z window: ``planes`` (None: the default of
    :func:`window_for_pair`), the stack plane a one-plane target belongs to (None: the
    middle) and ``fixed``, the window of a 2.5D model being fine-tuned."""

    planes: int | None = None
    target_plane: int | None = None
    fixed: ZWindow | None = None


def data_dims(image: TrainingImage, z_as_channels: bool = False) -> int:
    """2 for a plane, 3 for a z-stack (after ``z_as_channels`` folds the planes into channels)."""
    x, _ = image.channels("input")
    return 2 if z_as_channels or x.ndim == 3 else x.ndim - 1


def training_pairs(image: TrainingImage, targets: Sequence[TrainingImage], spatial_dims: int | None = None,
                   z_as_channels: bool = False, z_window: WindowRequest | None = None) -> TrainingPairs:
    """The (input, target) pairs for a ``spatial_dims`` model (None: the data's own, 3 for a stack).

    ``z_as_channels`` feeds the planes of an input stack to a 2D model as channels (a
    brightfield focal series): channels "<name> z0", "<name> z1", ... ``z_window``: the
    pairs of a 2.5D model (see :func:`window_training_pairs`).
    """
    if not targets:
        raise InputError("Choose at least one target layer (the real stain the model should learn).")
    if z_window is not None:
        return window_training_pairs(image, targets, z_window)
    x, input_names = image.channels("input")
    if x.size == 0:
        raise InputError(f"The input '{image.name}' is empty.")
    if z_as_channels and x.ndim == 4:
        c, z = x.shape[:2]
        x = x.reshape((c * z,) + x.shape[2:])
        input_names = [f"{n} z{k}" for n in input_names for k in range(z)]
    if x.ndim not in (3, 4):
        raise InputError(f"The input '{image.name}' has shape {size_text(np.shape(image.data))}; "
                         "a plane or z-stack is needed.")
    spatial = tuple(x.shape[1:])
    dims = spatial_dims or len(spatial)
    ys, target_names = [], []
    for target in targets:
        y, names = target.channels("target")
        if tuple(y.shape[1:]) != spatial:
            raise InputError(f"The target layer '{target.name}' is {layer_size_text(y.shape[1:])} but the input is "
                             f"{layer_size_text(spatial)}: pairs must have the same shape.")
        ys.append(y)
        target_names += names
    y = np.concatenate(ys)
    if len(spatial) == 2 and dims == 3:
        kind = "single colour image" if image.rgb else "single plane"
        raise InputError(f"A 3D model needs a z-stack, but '{image.name}' is a {kind}.")
    if len(spatial) == 3 and dims == 2:  # a stack for a 2D model: every plane is a pair
        inputs, pairs = [x[:, z] for z in range(spatial[0])], [y[:, z] for z in range(spatial[0])]
        return TrainingPairs(inputs, pairs, input_names, target_names, dims, source_planes=list(range(spatial[0])))
    return TrainingPairs([x], [y], input_names, target_names, dims)


def window_training_pairs(image: TrainingImage, targets: Sequence[TrainingImage], request: WindowRequest) -> TrainingPairs:
    """The pair of a 2.5D model: the input stack (cut to the window of a one-plane target) and its targets.

    The targets are all planes (of stack plane ``request.target_plane``) or all stacks (every
    plane whose window lies inside the stack is a pair); the Trainer's dataset cuts the
    windows (``training.datasets.window_pairs``), normalised as at prediction.
    """
    if image.rgb:
        raise InputError(f"A 2.5D model reads a grey z-stack (a focal series), but '{image.name}' is a colour image.")
    x, input_names = image.channels("input")
    if x.ndim != 4:
        raise InputError(f"A 2.5D model learns from a z-stack (a focal series), but '{image.name}' is a single plane.")
    spatial = tuple(x.shape[1:])
    ys, target_names = [], []
    for target in targets:
        y, names = target.channels("target")
        if tuple(y.shape[1:]) not in (spatial, spatial[1:]):
            raise InputError(f"The target layer '{target.name}' is {layer_size_text(y.shape[1:])} but the input '{image.name}' "
                             f"is {layer_size_text(spatial)}: a target is one plane of it or the whole stack.")
        ys.append(y)
        target_names += names
    kinds = {y.ndim for y in ys}
    if len(kinds) > 1:
        raise InputError("The target layers mix single planes and z-stacks: choose planes only or stacks only.")
    is_stack = kinds == {4}
    window, planes = window_for_pair(x.shape, is_stack, request.planes, request.target_plane, request.fixed,
                                     f"'{image.name}'")
    if is_stack:
        source = [z for z in range(spatial[0]) if window.is_full(z, spatial[0])]
    else:
        source = [planes.start + window.centre]
    return TrainingPairs([x[:, planes]], [np.concatenate(ys)], input_names, target_names, 2, z_window=window,
                         source_planes=source)


# A 2.5D model trained on target stacks reads this many planes unless told otherwise: the
# in-silico labeling and VisCy 2.5D models use 3-5 planes around the predicted one.
DEFAULT_WINDOW_PLANES = 5


def window_for_pair(stack_shape: Sequence[int], target_is_stack: bool, planes: int | None = None,
                    target_plane: int | None = None, window: ZWindow | None = None,
                    name: str = "the input") -> tuple[ZWindow, slice]:
    """The z window of a new (or given) 2.5D model, and the planes of the stack to train on.

    ``stack_shape`` is (C, Z, Y, X). A single-plane target belongs to ``target_plane`` of the
    stack (default: its middle plane); the window of ``planes`` planes (default: the whole
    stack) is placed around it, inside the stack, and the stack is cut to it. A target stack
    trains every plane whose window fits; its window is ``planes`` (default 5, at most the
    stack) centred planes. ``window``: the window of a model being fine-tuned (fixed).
    """
    if len(stack_shape) != 4:
        raise InputError(f"A 2.5D model learns from a z-stack (a focal series), but {name} is a single plane.")
    n = int(stack_shape[1])
    what = name[0].upper() + name[1:]
    if planes is not None and window is not None and planes != window.planes:
        raise InputError(f"The model reads {window.planes} planes; it cannot be fine-tuned on windows of {planes}.")
    if target_is_stack:
        if target_plane is not None:
            raise InputError("The target is a z-stack: every plane is a target, so no target plane can be chosen.")
        size = planes or min(DEFAULT_WINDOW_PLANES, n)
        window = window or ZWindow(size, size // 2)
        window.check_stack(n, what)
        return window, slice(0, n)
    size = window.planes if window is not None else (planes or n)
    if size > n:
        raise InputError(f"{what} has {n} z-plane(s), fewer than the {size} planes the model should read.")
    plane = n // 2 if target_plane is None else int(target_plane)
    if not 0 <= plane < n:
        raise InputError(f"There is no plane {plane} in {name}: its planes are 0 to {n - 1}.")
    if window is None:
        start = min(max(plane - size // 2, 0), n - size)
        return ZWindow(size, plane - start), slice(start, start + size)
    start = plane - window.centre
    if start < 0 or start + window.planes > n:
        raise InputError(f"The model reads {window.below} plane(s) before and {window.above} after the predicted one: "
                         f"plane {plane} of {name} does not have them (its planes are 0 to {n - 1}).")
    return window, slice(start, start + window.planes)
