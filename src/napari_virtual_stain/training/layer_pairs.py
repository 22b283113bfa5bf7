"""Training pairs from what the user picked: one input layer and one or more target layers.

A 2D model learns from every plane of a stack (each plane is a pair); a 3D model from
the whole stack. Targets are stacked channel-wise; a missing target is NaN (masked out
of the loss, paper 002). Shapes that do not match are refused with a sentence. A 2.5D
model learns from a stack and a target plane (or stack): :func:`window_for_pair` places its
window of planes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ..models.zwindow import ZWindow


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _grey(data, rgb: bool) -> np.ndarray:
    """An RGB rendering of a grey stain (DeepLIIF's panels) becomes its mean over colours."""
    data = np.asarray(data, dtype=np.float32)
    return data.mean(axis=-1) if rgb else data


def pairs_from_layers(input_data, target_datas: Sequence, spatial_dims: int,
                      input_name: str = "input", target_names: Sequence[str] = (),
                      input_rgb: bool = False, targets_rgb: Sequence[bool] = (),
                      z_window: ZWindow | None = None, target_plane: int | None = None) -> tuple[list, list]:
    """(inputs, targets) lists for the Trainer: inputs (C, ...) and targets (T, ...) per pair.

    A grey input gives C = 1; an RGB input (a tissue photograph, an IHC image) C = 3.
    RGB targets are used as grey (the mean of their colours). With ``z_window`` (a 2.5D
    model) the input is a stack and the targets are planes (of stack plane ``target_plane``,
    default the middle) or stacks: see :func:`window_for_pair`.
    """
    if not target_datas:
        raise InputError("Choose at least one target layer (the real stain the model should learn).")
    if z_window is not None:
        if input_rgb:
            raise InputError(f"A 2.5D model reads a grey z-stack, but '{input_name}' is a colour image.")
        return _window_pairs_from_layers(input_data, target_datas, input_name, target_names, targets_rgb,
                                         z_window, target_plane)
    if input_rgb:
        rgb = np.asarray(input_data, dtype=np.float32)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise InputError(f"The RGB input '{input_name}' must be a colour image (Y, X, 3), not {_shape(rgb.shape)}.")
        if spatial_dims == 3:
            raise InputError(f"A 3D model needs a z-stack, but '{input_name}' is a single colour image.")
        target_datas = [_grey(t, bool(r)) for t, r in zip(target_datas, list(targets_rgb) + [False] * len(target_datas))]
        _, target_arrays = pairs_from_layers(rgb[..., 0], target_datas, 2, input_name, target_names)  # checks shapes
        return [np.moveaxis(rgb, -1, 0)], target_arrays
    target_datas = [_grey(t, bool(r)) for t, r in zip(target_datas, list(targets_rgb) + [False] * len(target_datas))]
    x = np.asarray(input_data, dtype=np.float32)
    if x.size == 0:
        raise InputError(f"The input layer '{input_name}' is empty.")
    if x.ndim not in (2, 3):
        raise InputError(f"The input layer '{input_name}' has shape {_shape(x.shape)}; a grey plane or z-stack is needed.")
    names = list(target_names) or [f"target {i + 1}" for i in range(len(target_datas))]
    ys = []
    for name, data in zip(names, target_datas):
        y = np.asarray(data, dtype=np.float32)
        if y.shape != x.shape:
            raise InputError(f"The target layer '{name}' is {_shape(y.shape)} but the input '{input_name}' is "
                             f"{_shape(x.shape)}: pairs must have the same shape.")
        ys.append(y)
    y = np.stack(ys)
    if x.ndim == 3 and spatial_dims == 2:  # a stack for a 2D model: every plane is a pair
        return [x[None, z] for z in range(x.shape[0])], [y[:, z] for z in range(x.shape[0])]
    if x.ndim == 2 and spatial_dims == 3:
        raise InputError(f"A 3D model needs a z-stack, but '{input_name}' is a single plane.")
    return [x[None]], [y]


def _window_pairs_from_layers(input_data, target_datas, input_name, target_names, targets_rgb, window, target_plane):
    x = np.asarray(input_data, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"A 2.5D model learns from a z-stack (a focal series), but '{input_name}' has shape "
                         f"{_shape(x.shape)}.")
    names = list(target_names) or [f"target {i + 1}" for i in range(len(target_datas))]
    ys = [_grey(t, bool(r)) for t, r in zip(target_datas, list(targets_rgb) + [False] * len(target_datas))]
    for name, y in zip(names, ys):
        if y.shape not in (x.shape, x.shape[1:]):
            raise InputError(f"The target layer '{name}' is {_shape(y.shape)} but the input '{input_name}' is "
                             f"{_shape(x.shape)} (ZxYxX): a target is one plane of it or the whole stack.")
    kinds = {y.ndim for y in ys}
    if len(kinds) > 1:
        raise InputError("The target layers mix single planes and z-stacks: choose planes only or stacks only.")
    is_stack = kinds == {3}
    _, planes = window_for_pair((1,) + x.shape, is_stack, None, target_plane, window, f"'{input_name}'")
    return [x[None, planes]], [np.stack(ys)]


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
    if planes is not None and window is not None and planes != window.planes:
        raise InputError(f"The model reads {window.planes} planes; it cannot be fine-tuned on windows of {planes}.")
    if target_is_stack:
        if target_plane is not None:
            raise InputError("The target is a z-stack: every plane is a target, so no target plane can be chosen.")
        size = planes or min(DEFAULT_WINDOW_PLANES, n)
        window = window or ZWindow(size, size // 2)
        window.check_stack(n, name[0].upper() + name[1:])
        return window, slice(0, n)
    size = window.planes if window is not None else (planes or n)
    if size > n:
        raise InputError(f"{name[0].upper() + name[1:]} has {n} z-plane(s), fewer than the {size} planes the model "
                         "should read.")
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
