"""Reading and writing microscopy images: TIFF / OME-TIFF / ImageJ hyperstacks (+ PNG/JPEG).

Three entry points:

* :func:`load_image` — the core reader used by the CLI and the napari reader. It returns a
  :class:`LoadedImage` whose axes are always in the project's canonical order
  ``[T][C][Z]YX[S]`` (channels first; ``S`` = RGB samples, last), with channel names and
  the pixel size in micrometres per spatial axis. Files bigger than
  :data:`LAZY_THRESHOLD_BYTES` (uncompressed) are opened lazily (memory map or dask over
  tifffile's zarr store) instead of being read whole.
* :func:`get_reader` / :func:`read_tiff` — the npe2 reader contribution (drag and drop in
  napari): every channel becomes its own image layer named after the channel, RGB stays one
  RGB layer, and the layer scale is the pixel size.
* :func:`save_tiff` — writes results (float32) as an ImageJ hyperstack or an OME-TIFF that
  keeps the channel names and pixel size, atomically (temporary file + rename).

Every problem with a file raises :class:`~napari_virtual_stain.errors.ReaderError` with one
sentence a microscopist understands; napari shows it as a notification.
"""

from __future__ import annotations

import logging
import math
import os
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tifffile

from ..errors import InputError, ReaderError

# Files whose pixels take more than this (uncompressed) are opened lazily.
LAZY_THRESHOLD_BYTES = 1 << 30

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
# Read by load_image (the CLI: DeepLIIF inputs are PNG) but left to napari's own reader.
OTHER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

CANONICAL_ORDER = "TCZYXS"
SPATIAL_AXES = "ZYX"

LayerDataTuple = tuple  # (data, kwargs, layer_type), as napari expects


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


# --------------------------------------------------------------------------- units


_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "å": 1e-4, "angstrom": 1e-4,
}


def _unit_factor(unit: str | None) -> float | None:
    """Micrometres per ``unit``; None for "pixel", "" or anything not a length."""
    if not unit:
        return None
    return _UNIT_TO_UM.get(str(unit).strip().lower())


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


# --------------------------------------------------------------------------- axes


def _canonical_axes(axes: str, shape: Sequence[int], rgb_samples: bool) -> str:
    """Rename tifffile's axis letters to ours (T, C, Z, Y, X, S).

    ``E`` (wavelength) is a channel axis; ``S`` stays ``S`` only for true RGB(A) pages,
    otherwise it is a channel axis; unnamed axes (``I`` image sequence, ``Q`` ...) become
    Z, then T, from the innermost outwards.
    """
    letters = []
    for letter, size in zip(axes, shape):
        if letter in "TCZYX":
            letters.append(letter)
        elif letter == "S":
            letters.append("S" if rgb_samples and size in (3, 4) else "C")
        elif letter == "E":
            letters.append("C")
        else:
            letters.append("?")
    for replacement in "ZT":
        if "?" in letters and replacement not in letters:
            last = len(letters) - 1 - letters[::-1].index("?")
            letters[last] = replacement
    result = "".join(letters)
    if "?" in result or len(set(result)) != len(result) or not {"Y", "X"} <= set(result):
        raise ReaderError(
            f"The image has axes {axes!r} of sizes {tuple(shape)}, which cannot be read as a "
            "(time, channel, z, y, x) image."
        )
    return result


def _to_canonical_order(data: Any, axes: str) -> tuple[Any, str]:
    order = sorted(range(len(axes)), key=lambda i: CANONICAL_ORDER.index(axes[i]))
    if order == list(range(len(axes))):
        return data, axes
    return data.transpose(order), "".join(axes[i] for i in order)


# --------------------------------------------------------------------------- metadata


def _imagej_pixel_size(tf: tifffile.TiffFile, axes: str, n_planes: int) -> tuple[dict, dict]:
    """Pixel sizes {axis: um} and extras from ImageJ metadata (unit, resolution, spacing, z labels)."""
    ij = tf.imagej_metadata or {}
    sizes: dict[str, float | None] = {}
    extra: dict = {}
    factor = _unit_factor(ij.get("unit"))
    if factor is not None:
        page = tf.pages.first
        for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
            res = page.tags.get(tag)
            if res is not None:
                num, den = res.value
                if num and den and (num, den) != (1, 1):
                    sizes[axis] = factor * den / num
        if "Z" in axes and _positive(ij.get("spacing")):
            sizes["Z"] = factor * float(ij["spacing"])
    labels = ij.get("Labels")
    if isinstance(labels, (list, tuple)) and "C" not in axes and len(labels) == n_planes:
        extra["plane_labels"] = [str(v) for v in labels]
        z = _z_positions(labels)
        if z is not None and "Z" in axes:
            extra["z_positions_um"] = z
            if "Z" not in sizes and len(z) > 1 and z[-1] != z[0]:
                # Napari needs one spacing: use the mean step, so the stack spans the real range.
                sizes["Z"] = abs(z[-1] - z[0]) / (len(z) - 1)
    return sizes, extra


_Z_LABEL = re.compile(r"^\s*z\s*[=:]\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([^\s\d]*)\s*$")


def _z_positions(labels: Sequence[Any]) -> list[float] | None:
    """Parse slice labels like 'z=1327.6um' into z positions in um (None unless all parse)."""
    values = []
    for label in labels:
        match = _Z_LABEL.match(str(label))
        if not match:
            return None
        factor = _unit_factor(match.group(2) or "um")
        if factor is None:
            return None
        values.append(float(match.group(1)) * factor)
    return values


def _imagej_channel_names(tf: tifffile.TiffFile, axes: str, shape: Sequence[int]) -> list[str] | None:
    """ImageJ 'Labels' are per-plane labels with the channel index varying fastest."""
    labels = (tf.imagej_metadata or {}).get("Labels")
    if "C" not in axes or not isinstance(labels, (list, tuple)):
        return None
    n_channels = shape[axes.index("C")]
    if len(labels) < n_channels:
        return None
    return [str(v) for v in labels[:n_channels]]


def _ome_metadata(tf: tifffile.TiffFile) -> tuple[list[str] | None, dict]:
    """Channel names and pixel sizes {axis: um} of the first OME Image."""
    try:
        root = ET.fromstring(tf.ome_metadata)
    except (ET.ParseError, TypeError):
        return None, {}
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return None, {}
    sizes: dict[str, float | None] = {}
    for axis in "XYZ":
        value = _positive(pixels.get(f"PhysicalSize{axis}"))
        factor = _unit_factor(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is not None and factor is not None:
            sizes[axis] = value * factor
    channels = [el for el in pixels if el.tag.endswith("Channel")]
    names = [el.get("Name") or el.get("ID") or f"C{i}" for i, el in enumerate(channels)]
    return (names or None), sizes


def _plain_tiff_pixel_size(tf: tifffile.TiffFile) -> dict:
    """Pixel size from the resolution tags of a plain TIFF, when they look like a real one.

    Only centimetre units and inch units with a value that is not a screen/print default
    (72, 96, 300 dpi ...) are trusted: most software writes 72 dpi without meaning it.
    """
    page = tf.pages.first
    unit = page.tags.get("ResolutionUnit")
    unit = int(unit.value) if unit is not None else 2
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    sizes: dict[str, float] = {}
    if um_per_unit is None:
        return sizes
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        res = page.tags.get(tag)
        if res is None:
            continue
        num, den = res.value
        if not num or not den:
            continue
        per_unit = num / den
        if unit == 2 and per_unit in (1, 72, 96, 150, 180, 200, 240, 300, 360, 600, 720, 1200, 2400):
            continue
        sizes[axis] = um_per_unit / per_unit
    return sizes


def _page_names(pages: Sequence[Any]) -> list[str] | None:
    """Distinct PageName tags of the given pages (how some multiplex exporters name channels)."""
    if len(pages) < 2 or len(pages) > 1000:
        return None
    names = []
    for page in pages:
        tag = getattr(page, "tags", {}).get("PageName")
        if tag is None:
            return None
        names.append(str(tag.value))
    return names if len(set(names)) == len(names) else None


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
    axes = _canonical_axes(series.axes, shape, rgb)
    names: list[str] | None = None
    extra: dict = {"format": "tiff"}
    if len(indices) > 1:  # separate same-shape series: a channel stack
        shape, axes = (len(indices),) + shape, "C" + axes
        names = _page_names([tf.series[i].pages[0] for i in indices])
    if tf.is_ome:
        names, sizes = _ome_metadata(tf)
        extra["format"] = "ome-tiff"
    elif tf.is_imagej:
        n_planes = int(np.prod([s for s, a in zip(shape, axes) if a in "TCZ"], dtype=np.int64))
        names = _imagej_channel_names(tf, axes, shape)
        sizes, more = _imagej_pixel_size(tf, axes, n_planes)
        extra.update(more, format="imagej")
    else:
        sizes = _plain_tiff_pixel_size(tf)
        if len(indices) == 1 and "C" not in axes and axes.startswith("Z") and series.axes[0] in "IQ":
            page_names = _page_names(list(series.pages))
            if page_names and len(page_names) == shape[0]:
                axes, names = "C" + axes[1:], page_names  # named pages: channels, not a z-stack
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
        lazy = nbytes > lazy_threshold_bytes
        data = _read_pixels(path, tf, indices, lazy)
    except ReaderError:
        raise
    except Exception as err:  # decoders raise many types; to the user it is one problem
        raise ReaderError(f"{path.name} is damaged or truncated and its pixels could not be read.") from err
    finally:
        tf.close()  # the lazy readers hold their own file handles

    data, axes = _to_canonical_order(data, axes)
    data = _bool_as_uint8(data)
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


def _bool_as_uint8(data: Any) -> Any:
    """Binary images (masks) as 0/1 uint8: every later step does arithmetic on pixels."""
    return data.astype(np.uint8) if data.dtype == bool else data


def _read_other_image(path: Path) -> LoadedImage:
    from skimage import io as skio  # imageio underneath; scikit-image is a declared dependency

    try:
        data = np.asarray(skio.imread(str(path)))
    except Exception as err:
        raise ReaderError(f"{path.name} is damaged or not a {path.suffix[1:].upper()} image: it could not be read.") from err
    if data.size == 0:
        raise ReaderError(f"{path.name} contains an empty image: there are no pixels to show.")
    data = _bool_as_uint8(data)
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


def _suffix(path: str | os.PathLike) -> str:
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
    data, canonical = _to_canonical_order(image.data, axes)
    n_channels = int(data.shape[canonical.index("C")]) if "C" in canonical else 0
    names = image.channel_names if "C" in image.axes and "C" in canonical and len(image.channel_names) == n_channels \
        else [f"C{i}" for i in range(n_channels)]
    spatial = "".join(a for a in canonical if a in SPATIAL_AXES)
    sizes = None
    if image.pixel_size_um:  # keep the sizes of the axes that stay spatial, by letter
        old = dict(zip(image.spatial_axes, image.pixel_size_um))
        sizes = tuple(old.get(a) for a in spatial)
        sizes = sizes if any(sizes) else None
    return LoadedImage(data, canonical, names, sizes, image.source_path, dict(image.extra, axes_given=axes))


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
        raise ReaderError(f"{str(path)!r} is a folder, not an image file.")
    suffix = _suffix(path)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff_file(path, lazy_threshold_bytes)
    if suffix in OTHER_IMAGE_SUFFIXES:
        return _read_other_image(path)
    raise ReaderError(f"{path.name} is not a TIFF, PNG or JPEG image file.")


# --------------------------------------------------------------------------- napari reader


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

    if image.is_rgb:
        return [(image.data, {**kwargs, "name": base, "rgb": True, "metadata": metadata}, "image")]
    if "C" not in image.axes:
        if not image.is_lazy:
            kwargs["contrast_limits"] = _display_range(image.data)
        return [(image.data, {**kwargs, "name": base, "metadata": metadata}, "image")]

    c = image.axes.index("C")
    names = list(image.channel_names)
    kwargs.update(
        channel_axis=c,
        name=names,
        metadata=[{**metadata, "channel_name": n, "channel_index": i} for i, n in enumerate(names)],
    )
    if not image.is_lazy:
        kwargs["contrast_limits"] = [_display_range(np.take(image.data, i, axis=c)) for i in range(len(names))]
    return [(image.data, kwargs, "image")]


def read_tiff(path: str | os.PathLike | list) -> list[LayerDataTuple]:
    """npe2 reader: the layers of one TIFF file (or of each file in a list)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[LayerDataTuple] = []
    for p in paths:
        layers.extend(layer_data_from_image(load_image(p)))
    return layers


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerDataTuple]] | None:
    """npe2 reader contribution: :func:`read_tiff` for TIFF paths, None for anything else.

    Checks only the name, never the content, so napari never crashes here; a bad file
    raises :class:`ReaderError` from the returned reader, which napari shows to the user.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_suffix(p) in TIFF_SUFFIXES for p in paths):
        return None
    return read_tiff


# --------------------------------------------------------------------------- writing


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
) -> Path:
    """Write ``data`` with ``axes`` (letters of ``TCZYXS``, any order) as a TIFF, atomically.

    ``format``: "imagej" (a hyperstack Fiji opens with channel names as slice labels),
    "ome" (OME-TIFF), or "auto": OME for ``.ome.tif(f)`` names and for data ImageJ cannot
    hold (RGB that is not 8-bit), ImageJ otherwise. Floats are written as float32.
    ``pixel_size_um`` gives one size per spatial axis (aligned from the right with the Z, Y,
    X axes present; None entries are unknown). Returns the written path.
    :func:`load_image` reads the file back with the same data, axes, names and pixel size.
    """
    path = Path(path)
    axes = axes.upper()
    data = np.asarray(data)
    if len(axes) != data.ndim or len(set(axes)) != len(axes) or set(axes) - set(CANONICAL_ORDER):
        raise InputError(f"Axes {axes!r} do not describe an array of shape {data.shape}.")
    if data.size == 0:
        raise InputError("There is nothing to save: the image is empty.")
    data, axes = _to_canonical_order(data, axes)
    data = _bool_as_uint8(data)
    n_channels = data.shape[axes.index("C")] if "C" in axes else 0
    names = [str(n) for n in channel_names] if channel_names else [f"C{i}" for i in range(n_channels)]
    if n_channels and len(names) != n_channels:
        raise InputError(f"{len(names)} channel names were given for {n_channels} channels.")

    spatial = "".join(a for a in axes if a in SPATIAL_AXES)
    sizes = list(pixel_size_um or [])[-len(spatial):] if pixel_size_um else []
    sizes = [None] * (len(spatial) - len(sizes)) + [_positive(s) for s in sizes]
    size_of = dict(zip(spatial, sizes))

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
    # A hidden sibling, created with the usual permissions, renamed over the target at the end.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tifffile.imwrite(tmp, data, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
