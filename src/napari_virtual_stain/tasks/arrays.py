"""Layer data <-> the core's channels-first arrays, converted once at the edges.

napari gives us a grey image (Y, X) or stack (Z, Y, X), an RGB(A) image (Y, X, 3|4), or an
array whose first axis holds channels. Models want (C, Y, X) or (C, Z, Y, X). Everything a
user can get wrong about that (RGB where grey is expected, an empty layer, a complex or
boolean array, a stack given to a model that needs a plane) is caught here with a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..models.card import ModelCard


@dataclass(frozen=True)
class Layout:
    """How a layer's data maps to channels-first: which layer axes are spatial."""

    rgb: bool  # channels are the last layer axis
    channel_axis: int | None  # layer axis holding channels, None for a single grey channel
    spatial_ndim: int  # 2 (Y, X) or 3 (Z, Y, X)

    def spatial_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.channel_axis is None:
            return tuple(shape)
        return tuple(s for i, s in enumerate(shape) if i != self.channel_axis % len(shape))


def _describe(shape) -> str:
    return "x".join(str(s) for s in shape)


def check_array(data, name: str) -> None:
    """Reject arrays no model can use, whatever the model."""
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) == 0 or 0 in shape:
        raise InputError(f"The layer '{name}' is empty ({_describe(shape) or 'no pixels'}): there is nothing to predict.")
    dtype = np.dtype(getattr(data, "dtype", np.float32))
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise InputError(f"The layer '{name}' holds {dtype} values; an image of numbers (integers or floats) is needed.")
    if dtype.kind == "c":
        raise InputError(f"The layer '{name}' is complex-valued; take its magnitude or phase first.")


def layout_for(data, card: ModelCard, rgb: bool, name: str) -> Layout:
    """Decide how ``data`` feeds ``card``'s model, or say in one sentence why it cannot."""
    check_array(data, name)
    shape = tuple(data.shape)
    n_in = card.n_in
    if rgb:
        if n_in == 1:
            raise InputError(
                f"'{name}' is an RGB image but the model '{card.name}' expects one grey channel "
                f"({card.input_channels[0]}); choose a grey layer or a model for colour images."
            )
        if n_in != shape[-1]:
            raise InputError(f"The model '{card.name}' needs {n_in} input channels but '{name}' is RGB with {shape[-1]}.")
        layout = Layout(rgb=True, channel_axis=len(shape) - 1, spatial_ndim=len(shape) - 1)
    elif n_in == 1:
        layout = Layout(rgb=False, channel_axis=None, spatial_ndim=len(shape))
    else:
        if shape[0] != n_in:
            raise InputError(
                f"The model '{card.name}' needs {n_in} input channels ({', '.join(card.input_channels)}) "
                f"but '{name}' has shape {_describe(shape)}; give a layer whose first axis holds those channels."
            )
        layout = Layout(rgb=False, channel_axis=0, spatial_ndim=len(shape) - 1)
    if layout.spatial_ndim not in (2, 3):
        raise InputError(
            f"'{name}' has {layout.spatial_ndim} spatial axes ({_describe(layout.spatial_shape(shape))}); "
            "a plane (Y, X) or a stack (Z, Y, X) is needed."
        )
    if card.spatial_dims == 3 and layout.spatial_ndim == 2:
        raise InputError(f"The model '{card.name}' is a 3D model and needs a z-stack, but '{name}' is a single plane.")
    return layout


def to_channels_first(data, layout: Layout):
    """A channels-first view of the layer data (no copy for numpy/dask/zarr when possible)."""
    if layout.channel_axis is None:
        return data[None]
    if layout.channel_axis == 0:
        return data
    if hasattr(data, "transpose"):
        axes = (layout.channel_axis,) + tuple(i for i in range(data.ndim) if i != layout.channel_axis)
        return data.transpose(axes)
    return np.moveaxis(np.asarray(data), layout.channel_axis, 0)


def nan_fraction(block: np.ndarray) -> float:
    """Share of non-finite values in a block (for a warning; the engine zeroes them)."""
    block = np.asarray(block)
    if block.dtype.kind != "f" or block.size == 0:
        return 0.0
    return float(1.0 - np.isfinite(block).mean())
