"""Writing results as TIFF: ImageJ hyperstacks or OME-TIFF with channel names and pixel size, atomically.

:func:`save_tiff` writes through a hidden temporary file renamed over the target, so a
crash never leaves half a file; :func:`~napari_virtual_stain.io.tiff_reader.load_image`
reads it back with the same data, axes, names and pixel size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile

from ..errors import InputError
from .outputs import atomic_file
from .tiff_metadata import bool_as_uint8, output_layout


def _writable(data: np.ndarray, imagej: bool) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind == "f" or data.dtype.kind == "c":
        return data.astype(np.float32)
    if imagej and data.dtype not in (np.uint8, np.uint16):
        return data.astype(np.float32)  # ImageJ knows 8/16-bit and float only
    return data


def save_tiff(
    path: str | os.PathLike,
    data: Any,
    axes: str,
    channel_names: Sequence[str] | None = None,
    pixel_size_um: Sequence[float | None] | None = None,
    *,
    format: str = "auto",
    compression: str | None = "zlib",
    pyramid: bool = True,
) -> Path:
    """Write ``data`` with ``axes`` (letters of ``TCZYXS``, any order) as a TIFF, atomically.

    ``format``: "imagej" (a hyperstack Fiji opens with channel names as slice labels),
    "ome" (OME-TIFF), or "auto": OME for ``.ome.tif(f)`` names and for data ImageJ cannot
    hold (RGB that is not 8-bit), ImageJ otherwise. Floats are written as float32.
    ``pixel_size_um`` gives one size per spatial axis (aligned from the right with the Z, Y,
    X axes present; None entries are unknown). An OME-TIFF larger than
    :data:`~.ome_zarr_writer.SMALLEST_LEVEL_SIDE` in Y or X gets sub-resolution levels
    (``pyramid``; Y and X halved by block means, as the OME-Zarr writer's levels) that
    QuPath, napari and this plugin open as a pyramid. Returns the written path.
    :func:`load_image` reads the file back with the same data, axes, names and pixel size.
    """
    path = Path(path)
    data, axes, names, size_of = output_layout(data, axes, channel_names, pixel_size_um)
    data = bool_as_uint8(data)
    n_channels = len(names) if "C" in axes else 0

    if format == "auto":
        is_ome_name = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
        rgb_not_8bit = "S" in axes and data.dtype != np.uint8
        format = "ome" if is_ome_name or rgb_not_8bit else "imagej"
    if format not in ("imagej", "ome"):
        raise InputError(f"Unknown TIFF format {format!r}: use 'imagej', 'ome' or 'auto'.")

    kwargs: dict[str, Any] = {"compression": compression}
    if "S" in axes:
        kwargs["photometric"] = "rgb"
    else:
        kwargs["photometric"] = "minisblack"
    if format == "imagej":
        data = _writable(data, imagej=True)
        # ImageJ hyperstacks are ordered T, Z, C, Y, X, S.
        order = sorted(range(len(axes)), key=lambda i: "TZCYXS".index(axes[i]))
        data, ij_axes = data.transpose(order), "".join(axes[i] for i in order)
        metadata: dict[str, Any] = {"axes": ij_axes}
        if n_channels:
            n_other = int(np.prod([data.shape[i] for i, a in enumerate(ij_axes) if a in "TZ"], dtype=np.int64))
            metadata["Labels"] = names * n_other  # one label per plane, channel fastest
        if any(size_of.get(a) for a in "XYZ"):
            metadata["unit"] = "um"
        if size_of.get("Z"):
            metadata["spacing"] = size_of["Z"]
        if size_of.get("X") and size_of.get("Y"):
            kwargs["resolution"] = (1.0 / size_of["X"], 1.0 / size_of["Y"])
        kwargs.update(imagej=True, metadata=metadata)
    else:
        data = _writable(data, imagej=False)
        metadata = {"axes": axes}
        if n_channels:
            metadata["Channel"] = {"Name": names}
        for axis in "XYZ":
            if size_of.get(axis):
                metadata[f"PhysicalSize{axis}"] = size_of[axis]
                metadata[f"PhysicalSize{axis}Unit"] = "µm"
        kwargs.update(ome=True, metadata=metadata)

    path.parent.mkdir(parents=True, exist_ok=True)
    levels = _sub_resolutions(data, axes) if format == "ome" and pyramid else []
    with atomic_file(path) as tmp:  # a hidden sibling with the usual permissions, renamed over the target
        if levels:
            _write_pyramid(tmp, data, levels, kwargs)
        else:
            tifffile.imwrite(tmp, data, **kwargs)
    return path


def _sub_resolutions(data: np.ndarray, axes: str) -> list[np.ndarray]:
    """The levels below full resolution: Y and X halved by block means until the larger side fits."""
    from ..tasks.output_pyramid import pyramid_of
    from .ome_zarr_writer import pyramid_factors

    y, x = axes.index("Y"), axes.index("X")
    factors = pyramid_factors((data.shape[y], data.shape[x]))
    return pyramid_of(data, [(1, 1)] + [(f, f) for f in factors], (y, x))[1:]


def _write_pyramid(path: Path, data: np.ndarray, levels: list[np.ndarray], kwargs: dict) -> None:
    """One OME-TIFF series whose sub-IFDs hold ``levels`` (tifffile's pyramid layout)."""
    level_kwargs = {k: kwargs[k] for k in ("compression", "photometric") if k in kwargs}
    bigtiff = data.nbytes + sum(level.nbytes for level in levels) > 2 ** 31
    with tifffile.TiffWriter(path, ome=True, bigtiff=bigtiff) as tw:
        first = {k: v for k, v in kwargs.items() if k != "ome"}
        tw.write(data, subifds=len(levels), **first)
        for level in levels:
            tw.write(level, subfiletype=1, **level_kwargs)
