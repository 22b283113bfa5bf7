"""Reading microscopy images: TIFF / OME-TIFF / ImageJ hyperstacks (+ PNG/JPEG).

The io package by job: this module reads, ``tiff_metadata`` interprets what a file says
(axes, names, pixel sizes), ``tiff_writer`` writes, ``napari_reader`` turns files into layers.

* :func:`load_image` — the core reader used by the CLI and the napari reader. It returns a
  :class:`LoadedImage` whose axes are always in the project's canonical order
  ``[T][C][Z]YX[S]`` (channels first; ``S`` = RGB samples, last), with channel names and
  the pixel size in micrometres per spatial axis. Files bigger than
  :data:`LAZY_THRESHOLD_BYTES` (uncompressed) are opened lazily (memory map or dask over
  tifffile's zarr store) instead of being read whole.
* :func:`with_axes` — the same image with its axes read differently (``--axes CYX``).

Every problem with a file raises :class:`~napari_virtual_stain.errors.ReaderError` with one
sentence a microscopist understands; napari shows it as a notification.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile

from ..errors import InputError, ReaderError
from .tiff_metadata import (CANONICAL_ORDER, SPATIAL_AXES, bool_as_uint8, canonical_axes, imagej_channel_names,
                            imagej_pixel_size, ome_metadata, page_names, plain_tiff_pixel_size, to_canonical_order)

# Files whose pixels take more than this (uncompressed) are opened lazily.
LAZY_THRESHOLD_BYTES = 1 << 30

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
# Read by load_image (the CLI: DeepLIIF inputs are PNG) but left to napari's own reader.
OTHER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")



@dataclass
class LoadedImage:
    """An image file's pixels and what its metadata says about them.

    ``data`` is a numpy array, a numpy memmap or a dask array (large files), with axes
    ``axes`` in canonical order ``[T][C][Z]YX[S]`` (``S`` = RGB/RGBA samples).
    ``channel_names`` has one name per entry of the ``C`` axis (empty without ``C``).
    ``pixel_size_um`` is None when the file says nothing about it, else one entry per
    spatial axis in ``axes`` (Z, Y, X as present), each a float in micrometres or None
    where that axis' spacing is unknown. ``extra`` holds other findings (for example
    ``z_positions_um`` parsed from ImageJ slice labels, ``plane_labels``).
    """

    data: Any
    axes: str
    channel_names: list[str]
    pixel_size_um: tuple[float | None, ...] | None
    source_path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in SPATIAL_AXES)

    @property
    def is_rgb(self) -> bool:
        return self.axes.endswith("S")

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.data, np.memmap) or not isinstance(self.data, np.ndarray)

    def scale(self) -> tuple[float, ...]:
        """Pixel size per spatial axis with 1.0 where unknown (what napari's ``scale`` needs)."""
        sizes = self.pixel_size_um or (None,) * len(self.spatial_axes)
        return tuple(float(s) if s else 1.0 for s in sizes)


# --------------------------------------------------------------------------- reading


def _check_not_truncated(path: Path, series: tifffile.TiffPageSeries) -> None:
    """Compare the last page's data offsets with the file size (cheap, catches truncation), and
    an uncompressed page's declared pixels with the bytes it stores (catches a forged header
    that declares a 100000 x 100000 image over a few kilobytes)."""
    size = path.stat().st_size
    page = series.pages[-1] if len(series.pages) else None
    if page is None or not hasattr(page, "dataoffsets"):
        return
    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
    if ends and max(ends) > size:
        raise ReaderError(f"{path.name} is truncated: the file ends before its image data does.")
    uncompressed = getattr(page, "compression", None) == tifffile.COMPRESSION.NONE
    declared = int(np.prod(page.shape, dtype=np.int64)) * page.dtype.itemsize if page.dtype is not None else 0
    if uncompressed and page.dtype is not None and page.dtype != bool and sum(page.databytecounts) < declared:
        raise ReaderError(f"{path.name} is damaged: its header declares {_shape_text(page.shape)} pixels "
                          f"({_bytes_text(declared)}) but the file holds only {_bytes_text(sum(page.databytecounts))} "
                          "of pixel data.")


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape if int(s) > 1) or "1"


def _bytes_text(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _channel_series(tf: tifffile.TiffFile) -> list[int]:
    """Indices of the series that are one multi-channel image.

    Normally just ``[0]``. A plain TIFF whose pages are separate series of the same 2D
    shape and type (one page per marker, as some multiplex exporters write) is a
    channel stack: all of them.
    """
    first = tf.series[0]
    if tf.is_ome or tf.is_imagej or len(tf.series) < 2 or len(first.shape) != 2:
        return [0]
    same = [i for i, s in enumerate(tf.series) if s.shape == first.shape and s.dtype == first.dtype]
    return same if len(same) == len(tf.series) else [0]


def _lazy_series(path: Path, series: tifffile.TiffPageSeries, index: int) -> Any:
    """A memory map (uncompressed, contiguous) or a dask array over tifffile's zarr store."""
    if series.dataoffset is not None and len(series.levels) == 1:
        try:
            return tifffile.memmap(str(path), mode="r", series=index)
        except (ValueError, OSError):
            pass  # not mappable after all (byte order, tiles...): fall back to zarr
    import dask.array as da
    import zarr

    store = tifffile.imread(str(path), aszarr=True, series=index, level=0)
    return da.from_zarr(zarr.open(store, mode="r"))


def _pyramid_levels(path: Path, index: int) -> list:
    """Every level of a pyramidal series (full resolution first) as lazy dask arrays."""
    import dask.array as da
    import zarr

    store = tifffile.imread(str(path), aszarr=True, series=index)  # all levels: a multiscale zarr group
    group = zarr.open(store, mode="r")
    return [da.from_zarr(group[key]) for key in sorted(group.array_keys(), key=int)]


def level_downsample(levels: list, axes: str) -> list[tuple[float, ...]]:
    """Each level's size factor per spatial axis relative to the first (1, 2, 4 ... for x2 pyramids)."""
    spatial = [i for i, a in enumerate(axes) if a in SPATIAL_AXES]
    first = levels[0].shape
    return [tuple(float(first[i]) / float(level.shape[i]) for i in spatial) for level in levels]


def _read_pixels(path: Path, tf: tifffile.TiffFile, indices: list[int], lazy: bool) -> Any:
    if not lazy:
        arrays = [tf.series[i].asarray() for i in indices]
        return arrays[0] if len(arrays) == 1 else np.stack(arrays)
    arrays = [_lazy_series(path, tf.series[i], i) for i in indices]
    if len(arrays) == 1:
        return arrays[0]
    import dask.array as da

    return da.stack([da.from_array(a) if isinstance(a, np.ndarray) else a for a in arrays])


def _describe_tiff(path: Path, tf: tifffile.TiffFile, indices: list[int]):
    """(shape, axes, channel names, pixel sizes {axis: um}, extra) of the image in ``tf``."""
    series = tf.series[0]
    shape = tuple(series.shape)
    if len(shape) < 2 or 0 in shape:
        raise ReaderError(f"{path.name} contains an empty image (shape {shape}): there are no pixels to show.")
    for i in indices:
        _check_not_truncated(path, tf.series[i])
    rgb = tf.pages.first.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    axes = canonical_axes(series.axes, shape, rgb)
    names: list[str] | None = None
    extra: dict = {"format": "tiff"}
    if len(indices) > 1:  # separate same-shape series: a channel stack
        shape, axes = (len(indices),) + shape, "C" + axes
        names = page_names([tf.series[i].pages[0] for i in indices])
    if tf.is_ome:
        names, sizes = ome_metadata(tf)
        extra["format"] = "ome-tiff"
    elif tf.is_imagej:
        n_planes = int(np.prod([s for s, a in zip(shape, axes) if a in "TCZ"], dtype=np.int64))
        names = imagej_channel_names(tf, axes, shape)
        sizes, more = imagej_pixel_size(tf, axes, n_planes)
        extra.update(more, format="imagej")
    else:
        sizes = plain_tiff_pixel_size(tf)
        if len(indices) == 1 and "C" not in axes and axes.startswith("Z") and series.axes[0] in "IQ":
            named = page_names(list(series.pages))
            if named and len(named) == shape[0]:
                axes, names = "C" + axes[1:], named  # named pages: channels, not a z-stack
    return shape, axes, names, sizes, extra


# tifffile logs (rather than raises) when a file's page chain is cut short and then
# returns the pages it found: these messages mean the file is truncated or damaged.
_DAMAGE_LOG_MESSAGES = ("invalid page offset", "failed to reshape", "truncated", "invalid tag")


class _TifffileDamageLog(logging.Handler):
    """Collects tifffile's log messages that reveal a damaged file."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(words in text for words in _DAMAGE_LOG_MESSAGES):
            self.messages.append(text)


def _read_tiff_file(path: Path, lazy_threshold_bytes: int) -> LoadedImage:
    damage = _TifffileDamageLog()
    logger = logging.getLogger("tifffile")
    logger.addHandler(damage)
    try:
        return _read_tiff_file_logged(path, lazy_threshold_bytes, damage)
    finally:
        logger.removeHandler(damage)


def _read_tiff_file_logged(path: Path, lazy_threshold_bytes: int, damage: _TifffileDamageLog) -> LoadedImage:
    try:
        tf = tifffile.TiffFile(str(path))
    except tifffile.TiffFileError as err:
        raise ReaderError(f"{path.name} is not a TIFF file (its content does not start like one).") from err
    except Exception as err:  # a damaged header fails in many ways (struct, value, index errors)
        raise ReaderError(f"{path.name} is damaged and could not be opened as a TIFF file.") from err
    try:
        if not tf.series:
            raise ReaderError(f"{path.name} is a TIFF file without any image in it.")
        indices = _channel_series(tf)
        shape, axes, names, sizes, extra = _describe_tiff(path, tf, indices)
        if damage.messages:
            raise ReaderError(f"{path.name} is truncated or damaged: some of its images cannot be found.")
        nbytes = int(np.prod(shape, dtype=np.int64)) * tf.series[0].dtype.itemsize
        # A pyramid (whole-slide OME-TIFF) is opened lazily, every level: a napari multiscale layer.
        levels = _pyramid_levels(path, indices[0]) if len(indices) == 1 and len(tf.series[indices[0]].levels) > 1 else []
        lazy = nbytes > lazy_threshold_bytes or bool(levels)
        data = levels[0] if levels else _read_pixels(path, tf, indices, lazy)
    except ReaderError:
        raise
    except Exception as err:  # decoders raise many types; to the user it is one problem
        raise ReaderError(f"{path.name} is damaged or truncated and its pixels could not be read.") from err
    finally:
        tf.close()  # the lazy readers hold their own file handles

    if levels:
        extra["levels"] = [bool_as_uint8(to_canonical_order(level, axes)[0]) for level in levels]
        extra["level_downsample"] = level_downsample(extra["levels"], to_canonical_order(levels[0], axes)[1])
    data, axes = to_canonical_order(data, axes)
    data = bool_as_uint8(data)
    n_channels = data.shape[axes.index("C")] if "C" in axes else 0
    if names is None or len(names) != n_channels:
        names = [f"C{i}" for i in range(n_channels)]
    spatial = "".join(a for a in axes if a in SPATIAL_AXES)
    # 12 significant digits: 9.84, not 9.840000000000009 from a mean of label positions
    pixel_size = tuple(float(f"{sizes[a]:.12g}") if sizes.get(a) else None for a in spatial)
    extra["lazy"] = lazy
    return LoadedImage(
        data=data,
        axes=axes,
        channel_names=names,
        pixel_size_um=pixel_size if any(pixel_size) else None,
        source_path=str(path),
        extra=extra,
    )


def _read_other_image(path: Path) -> LoadedImage:
    from skimage import io as skio  # imageio underneath; scikit-image is a declared dependency

    try:
        data = np.asarray(skio.imread(str(path)))
    except Exception as err:
        raise ReaderError(f"{path.name} is damaged or not a {path.suffix[1:].upper()} image: it could not be read.") from err
    if data.size == 0:
        raise ReaderError(f"{path.name} contains an empty image: there are no pixels to show.")
    data = bool_as_uint8(data)
    if data.ndim == 3 and data.shape[-1] == 4 and np.all(data[..., 3] == np.iinfo(data.dtype).max
                                                         if data.dtype.kind == "u" else data[..., 3] == 1):
        data = data[..., :3]  # an opaque alpha channel carries nothing
    if data.ndim == 2:
        axes = "YX"
    elif data.ndim == 3 and data.shape[-1] in (3, 4):
        axes = "YXS"
    elif data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha: keep the grey
        data, axes = data[..., 0], "YX"
    else:
        raise ReaderError(f"{path.name} has shape {data.shape}, which is not a grey or colour picture.")
    return LoadedImage(data, axes, [], None, str(path), {"format": path.suffix[1:].lower(), "lazy": False})


def image_suffix(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix in TIFF_SUFFIXES + OTHER_IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def with_axes(image: LoadedImage, axes: str) -> LoadedImage:
    """``image`` with its axes read as ``axes`` instead (e.g. "CYX" for a plain 9-page TIFF that
    the reader took for a z-stack): same pixels, one letter per axis, any order."""
    axes = axes.upper()
    ndim = len(image.data.shape)
    if len(axes) != ndim or len(set(axes)) != len(axes) or set(axes) - set(CANONICAL_ORDER) \
            or not {"Y", "X"} <= set(axes):
        raise InputError(f"The axes {axes!r} do not describe {Path(image.source_path).name or 'the image'}, which has "
                         f"{ndim} axes of sizes {tuple(int(v) for v in image.data.shape)} (read as {image.axes}); give one "
                         "letter per axis from T, C, Z, Y, X, S (colour samples), with Y and X.")
    if axes == image.axes:
        return image
    data, canonical = to_canonical_order(image.data, axes)
    n_channels = int(data.shape[canonical.index("C")]) if "C" in canonical else 0
    names = image.channel_names if "C" in image.axes and "C" in canonical and len(image.channel_names) == n_channels \
        else [f"C{i}" for i in range(n_channels)]
    spatial = "".join(a for a in canonical if a in SPATIAL_AXES)
    sizes = None
    if image.pixel_size_um:  # keep the sizes of the axes that stay spatial, by letter
        old = dict(zip(image.spatial_axes, image.pixel_size_um))
        sizes = tuple(old.get(a) for a in spatial)
        sizes = sizes if any(sizes) else None
    extra = dict(image.extra, axes_given=axes)
    if "levels" in extra:  # a pyramid: every level read the same way
        extra["levels"] = [to_canonical_order(level, axes)[0] for level in extra["levels"]]
        extra["level_downsample"] = level_downsample(extra["levels"], canonical)
    return LoadedImage(data, canonical, names, sizes, image.source_path, extra)


def load_image(path: str | os.PathLike, lazy_threshold_bytes: int = LAZY_THRESHOLD_BYTES,
               axes: str | None = None) -> LoadedImage:
    """Read an image file into a :class:`LoadedImage` (canonical axes, names, pixel size).

    TIFF, OME-TIFF and ImageJ hyperstacks with their metadata; PNG and JPEG as plain
    pictures (no pixel size). TIFFs whose pixels take more than ``lazy_threshold_bytes``
    are opened lazily. ``axes`` overrides what the file says (see :func:`with_axes`).
    Raises :class:`ReaderError` for missing, foreign, damaged or empty files.
    """
    image = _load_image(path, lazy_threshold_bytes)
    return with_axes(image, axes) if axes else image


def _load_image(path: str | os.PathLike, lazy_threshold_bytes: int) -> LoadedImage:
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"There is no file {str(path)!r}.")
    if path.is_dir():
        from .ome_zarr_reader import is_zarr_folder, read_ome_zarr

        if is_zarr_folder(path):  # OME-Zarr stores are folders
            return read_ome_zarr(path)
        raise ReaderError(f"{str(path)!r} is a folder, not an image file.")
    suffix = image_suffix(path)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff_file(path, lazy_threshold_bytes)
    if suffix in OTHER_IMAGE_SUFFIXES:
        return _read_other_image(path)
    raise ReaderError(f"{path.name} is not a TIFF, PNG or JPEG image file.")
