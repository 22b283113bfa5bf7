"""The npe2 reader contribution: TIFF files dropped on napari become layers.

Every channel becomes its own image layer named after the channel, RGB stays one RGB layer,
and the layer scale is the pixel size. Pyramids (OME-Zarr, pyramidal OME-TIFF) become napari
multiscale layers: the data is the list of levels, full resolution first, all lazy; their
contrast comes from the smallest level. An HCS plate opens as one set of layers per field.
Problems are ReaderErrors: napari shows the sentence.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .ome_zarr_reader import ZARR_SUFFIXES, open_ome_zarr
from .tiff_reader import TIFF_SUFFIXES, LoadedImage, image_suffix, load_image

# Contrast limits are computed from a pyramid's smallest level only when it is at most this big.
SMALL_LEVEL_PIXELS = 1 << 24

LayerDataTuple = tuple  # (data, kwargs, layer_type), as napari expects


def _display_range(plane_stack: np.ndarray) -> tuple[float, float]:
    """Contrast limits that survive a few very bright pixels (sparse multiplex counts) and NaNs."""
    sample = np.asarray(plane_stack)
    step = max(1, int(math.sqrt(sample.size / 1_000_000)))  # about a million values is plenty
    sample = sample[..., ::step, ::step]
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return 0.0, 1.0
    lo = float(np.min(sample))
    hi = float(np.percentile(sample, 99.9))
    if hi <= lo:
        hi = float(np.max(sample))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def layer_data_from_image(image: LoadedImage, name: str | None = None) -> list[LayerDataTuple]:
    """napari layer data tuples for ``image``: one layer per channel, or one RGB layer.

    Layers get the pixel size as ``scale`` (and ``units`` in um when it is known) and
    carry ``source_path``, ``axes``, ``channel_names`` and ``pixel_size_um`` in ``metadata``.
    """
    base = name or Path(image.source_path).name.split(".")[0] or "image"
    spatial = image.spatial_axes
    # Non-spatial, non-channel axes (T) are displayed with unit scale.
    display_axes = [a for a in image.axes if a not in "CS"]
    spatial_scale = dict(zip(spatial, image.scale()))
    scale = tuple(spatial_scale.get(a, 1.0) for a in display_axes)
    metadata = {
        "source_path": image.source_path,
        "axes": image.axes,
        "channel_names": list(image.channel_names),
        "pixel_size_um": image.pixel_size_um,
    }
    kwargs: dict[str, Any] = {"scale": scale, "axis_labels": tuple(a.lower() for a in display_axes)}
    if image.pixel_size_um is not None and all(image.pixel_size_um) and "T" not in image.axes:
        kwargs["units"] = ("um",) * len(display_axes)
    levels = image.extra.get("levels") or []
    data = image.data
    if len(levels) > 1:
        data = list(levels)
        kwargs["multiscale"] = True
        metadata["level_downsample"] = image.extra.get("level_downsample")
    smallest = levels[-1] if len(levels) > 1 and math.prod(levels[-1].shape) <= SMALL_LEVEL_PIXELS else None

    if image.is_rgb:
        return [(data, {**kwargs, "name": base, "rgb": True, "metadata": metadata}, "image")]
    if "C" not in image.axes:
        if not image.is_lazy or smallest is not None:
            kwargs["contrast_limits"] = _display_range(image.data if smallest is None else smallest)
        return [(data, {**kwargs, "name": base, "metadata": metadata}, "image")]

    c = image.axes.index("C")
    names = list(image.channel_names)
    kwargs.update(
        channel_axis=c,
        # a given name (a plate's field) goes before each channel's, so fields do not share names
        name=[f"{name} {n}" for n in names] if name else names,
        metadata=[{**metadata, "channel_name": n, "channel_index": i} for i, n in enumerate(names)],
    )
    if not image.is_lazy or smallest is not None:
        source = image.data if smallest is None else np.asarray(smallest)
        kwargs["contrast_limits"] = [_display_range(np.take(source, i, axis=c)) for i in range(len(names))]
    return [(data, kwargs, "image")]


def read_tiff(path: str | os.PathLike | list) -> list[LayerDataTuple]:
    """npe2 reader: the layers of one TIFF file (or of each file in a list)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[LayerDataTuple] = []
    for p in paths:
        if Path(p).is_dir():  # an OME-Zarr image, or every field of a plate
            fields = open_ome_zarr(p)
            for image in fields:
                name = _field_name(p, image) if len(fields) > 1 else None
                layers.extend(layer_data_from_image(image, name=name))
            continue
        layers.extend(layer_data_from_image(load_image(p)))
    return layers


def _field_name(plate: str | os.PathLike, image: LoadedImage) -> str:
    """'plate A/1/0': the plate's name and the field's place in it."""
    relative = Path(image.source_path).relative_to(Path(plate))
    return f"{Path(plate).name.split('.')[0]} {relative.as_posix()}"


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerDataTuple]] | None:
    """npe2 reader contribution: :func:`read_tiff` for TIFF paths and ``.zarr`` folders, None for anything else.

    Checks only the name, never the content, so napari never crashes here; a bad file
    raises :class:`ReaderError` from the returned reader, which napari shows to the user.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    def ours(p) -> bool:
        name = str(p).rstrip("/\\").lower()
        return image_suffix(p) in TIFF_SUFFIXES or name.endswith(ZARR_SUFFIXES)

    if not paths or not all(ours(p) for p in paths):
        return None
    return read_tiff
