"""Writing results as OME-Zarr through ``ome-zarr``: a multiscale pyramid, channel names, pixel sizes, atomically.

:func:`save_ome_zarr` builds the store in a hidden sibling folder and renames it into place,
so a crash never leaves half a store; :func:`~napari_virtual_stain.io.ome_zarr_reader.read_ome_zarr`
reads it back with the same full-resolution pixels, axes, names and pixel sizes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .ome_zarr_reader import ZARR_SUFFIXES, is_zarr_folder
from .outputs import _check_not_an_input, _check_writable_place, refuse_existing
from .tiff_metadata import bool_as_uint8, output_layout

# Pyramid levels are added (each half the size in Y and X) until the largest side fits this.
SMALLEST_LEVEL_SIDE = 256
FORMATS = ("0.4", "0.5")


def check_output_store(path, *, inputs=(), label: str = "output", overwrite: bool = True) -> Path:
    """Check that a command may write the OME-Zarr store ``path`` (a folder ending in .zarr)."""
    if path is None or str(path).strip() == "":
        raise InputError(f"The {label} store name is empty.")
    path = Path(path).expanduser()
    if not path.name.lower().endswith(ZARR_SUFFIXES):
        raise InputError(f"The {label} {path.name} must end in .ome.zarr or .zarr: that is the format written.")
    if path.exists() and not is_zarr_folder(path):
        # never replace a folder of someone's files because its name ends in .zarr
        raise InputError(f"The {label} {path} exists and is not a zarr store: choose another name.")
    _check_not_an_input(path, inputs, label)
    refuse_existing(path, overwrite, label)
    _check_writable_place(path, label)
    return path


def pyramid_factors(shape_yx: Sequence[int], n_levels: int | None = None) -> list[int]:
    """Downsampling factors of the levels below full resolution: 2, 4, 8 ... (``n_levels`` in all)."""
    if n_levels is None:
        n_levels = 1
        while max(shape_yx) / 2 ** (n_levels - 1) > SMALLEST_LEVEL_SIDE and min(shape_yx) / 2 ** n_levels >= 1:
            n_levels += 1
    if n_levels < 1:
        raise InputError(f"An OME-Zarr pyramid needs at least one level, not {n_levels}.")
    if min(shape_yx) / 2 ** (n_levels - 1) < 1:
        raise InputError(f"An image of {shape_yx[0]} x {shape_yx[1]} pixels cannot have {n_levels} pyramid levels.")
    return [2 ** i for i in range(1, n_levels)]


def _omero(data: np.ndarray, names: list[str], c_axis: int | None) -> dict:
    """Channel labels and display windows (from the data) for viewers such as napari-ome-zarr."""
    channels = []
    for i, name in enumerate(names):
        plane = np.take(data, i, axis=c_axis) if c_axis is not None else data
        finite = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        channels.append({"label": name, "color": "FFFFFF", "active": True,
                         "window": {"min": lo, "max": hi if hi > lo else lo + 1.0, "start": lo,
                                    "end": hi if hi > lo else lo + 1.0}})
    return {"channels": channels}


def save_ome_zarr(path: str | os.PathLike, data: Any, axes: str, channel_names: Sequence[str] | None = None,
                  pixel_size_um: Sequence[float | None] | None = None, *, n_levels: int | None = None,
                  version: str = "0.5") -> Path:
    """Write ``data`` with ``axes`` (letters of ``TCZYX``, any order) as an OME-Zarr image, atomically.

    Levels below full resolution halve Y and X (Z is kept), down to about
    :data:`SMALLEST_LEVEL_SIDE` pixels, or ``n_levels`` in all. ``pixel_size_um`` gives one size
    per spatial axis (aligned from the right with Z, Y, X; None entries are unknown and written
    as 1 without a unit). ``version``: NGFF "0.5" (zarr v3) or "0.4" (zarr v2). Floats are
    written as float32. Returns the written path.
    """
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    path = Path(path)
    if "S" in axes.upper():
        raise InputError("OME-Zarr has no colour-sample axis: write RGB results as TIFF.")
    if version not in FORMATS:
        raise InputError(f"Unknown OME-Zarr version {version!r}: use {' or '.join(FORMATS)}.")
    data, axes, names, size_of = output_layout(data, axes, channel_names, pixel_size_um)
    data = bool_as_uint8(data)
    if data.dtype.kind == "f":
        data = data.astype(np.float32, copy=False)
    n_channels = len(names) if "C" in axes else 0
    spatial = "".join(size_of)
    scale = {a.lower(): float(size_of.get(a) or 1.0) for a in axes}
    units = {a.lower(): "micrometer" for a in spatial if size_of.get(a)}
    factors = pyramid_factors(data.shape[-2:], n_levels)
    chunks = tuple(1 if a in "TC" else min(n, 64 if a == "Z" else 512) for a, n in zip(axes, data.shape))

    fmt = FormatV05() if version == "0.5" else FormatV04()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=fmt.zarr_format)
        write_image(data, group, scale_factors=factors, axes=axes.lower(), fmt=fmt, scale=scale,
                    axes_units=units or None, storage_options={"chunks": chunks},
                    **({"omero": _omero(data, names, axes.index("C"))} if n_channels else {}))
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``: a rename, with an older store moved aside first."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # put the earlier result back
        raise
    shutil.rmtree(old, ignore_errors=True)
