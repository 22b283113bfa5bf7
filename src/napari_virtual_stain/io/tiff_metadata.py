"""What TIFF metadata says about an image: axes in canonical order, channel names, pixel sizes.

ImageJ hyperstacks (labels, spacing, unit), OME-TIFF (channels, physical sizes) and plain
TIFFs (resolution tags, page names). Used by the reader (``tiff_reader``) and the writer
(``tiff_writer``), which share the canonical axis order ``[T][C][Z]YX[S]``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any, Sequence

import numpy as np
import tifffile

from ..errors import InputError, ReaderError

CANONICAL_ORDER = "TCZYXS"
SPATIAL_AXES = "ZYX"


# --------------------------------------------------------------------------- units


_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "å": 1e-4, "angstrom": 1e-4,
}


def unit_factor(unit: str | None) -> float | None:
    """Micrometres per ``unit``; None for "pixel", "" or anything not a length."""
    if not unit:
        return None
    return _UNIT_TO_UM.get(str(unit).strip().lower())


def positive_number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


# --------------------------------------------------------------------------- axes


def canonical_axes(axes: str, shape: Sequence[int], rgb_samples: bool) -> str:
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


def to_canonical_order(data: Any, axes: str) -> tuple[Any, str]:
    order = sorted(range(len(axes)), key=lambda i: CANONICAL_ORDER.index(axes[i]))
    if order == list(range(len(axes))):
        return data, axes
    return data.transpose(order), "".join(axes[i] for i in order)


# --------------------------------------------------------------------------- metadata


def imagej_pixel_size(tf: tifffile.TiffFile, axes: str, n_planes: int) -> tuple[dict, dict]:
    """Pixel sizes {axis: um} and extras from ImageJ metadata (unit, resolution, spacing, z labels)."""
    ij = tf.imagej_metadata or {}
    sizes: dict[str, float | None] = {}
    extra: dict = {}
    factor = unit_factor(ij.get("unit"))
    if factor is not None:
        page = tf.pages.first
        for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
            res = page.tags.get(tag)
            if res is not None:
                num, den = res.value
                if num and den and (num, den) != (1, 1):
                    sizes[axis] = factor * den / num
        if "Z" in axes and positive_number(ij.get("spacing")):
            sizes["Z"] = factor * float(ij["spacing"])
    labels = ij.get("Labels")
    if isinstance(labels, (list, tuple)) and "C" not in axes and len(labels) == n_planes:
        extra["plane_labels"] = [str(v) for v in labels]
        z = z_positions(labels)
        if z is not None and "Z" in axes:
            extra["z_positions_um"] = z
            if "Z" not in sizes and len(z) > 1 and z[-1] != z[0]:
                # Napari needs one spacing: use the mean step, so the stack spans the real range.
                sizes["Z"] = abs(z[-1] - z[0]) / (len(z) - 1)
    return sizes, extra


_Z_LABEL = re.compile(r"^\s*z\s*[=:]\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([^\s\d]*)\s*$")


def z_positions(labels: Sequence[Any]) -> list[float] | None:
    """Parse slice labels like 'z=1327.6um' into z positions in um (None unless all parse)."""
    values = []
    for label in labels:
        match = _Z_LABEL.match(str(label))
        if not match:
            return None
        factor = unit_factor(match.group(2) or "um")
        if factor is None:
            return None
        values.append(float(match.group(1)) * factor)
    return values


def imagej_channel_names(tf: tifffile.TiffFile, axes: str, shape: Sequence[int]) -> list[str] | None:
    """ImageJ 'Labels' are per-plane labels with the channel index varying fastest."""
    labels = (tf.imagej_metadata or {}).get("Labels")
    if "C" not in axes or not isinstance(labels, (list, tuple)):
        return None
    n_channels = shape[axes.index("C")]
    if len(labels) < n_channels:
        return None
    return [str(v) for v in labels[:n_channels]]


def ome_metadata(tf: tifffile.TiffFile) -> tuple[list[str] | None, dict]:
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
        value = positive_number(pixels.get(f"PhysicalSize{axis}"))
        factor = unit_factor(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is not None and factor is not None:
            sizes[axis] = value * factor
    channels = [el for el in pixels if el.tag.endswith("Channel")]
    names = [el.get("Name") or el.get("ID") or f"C{i}" for i, el in enumerate(channels)]
    return (names or None), sizes


def plain_tiff_pixel_size(tf: tifffile.TiffFile) -> dict:
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


def page_names(pages: Sequence[Any]) -> list[str] | None:
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


def bool_as_uint8(data: Any) -> Any:
    """Binary images (masks) as 0/1 uint8: every later step does arithmetic on pixels."""
    return data.astype(np.uint8) if data.dtype == bool else data


def output_layout(data, axes: str, channel_names, pixel_size_um):
    """What every writer checks first: (data, axes) in canonical order, channel names and the
    pixel size per spatial axis (``pixel_size_um`` aligned from the right with the Z, Y, X axes
    present; None = unknown). Sentences for axes that do not fit, empty data or names that do
    not match the channels."""
    axes = axes.upper()
    data = np.asarray(data)
    if len(axes) != data.ndim or len(set(axes)) != len(axes) or set(axes) - set(CANONICAL_ORDER):
        raise InputError(f"Axes {axes!r} do not describe an array of shape {data.shape}.")
    if data.size == 0:
        raise InputError("There is nothing to save: the image is empty.")
    data, axes = to_canonical_order(data, axes)
    n_channels = data.shape[axes.index("C")] if "C" in axes else 0
    names = [str(n) for n in channel_names] if channel_names else [f"C{i}" for i in range(n_channels)]
    if n_channels and len(names) != n_channels:
        raise InputError(f"{len(names)} channel names were given for {n_channels} channels.")
    spatial = "".join(a for a in axes if a in SPATIAL_AXES)
    sizes = list(pixel_size_um or [])[-len(spatial):] if pixel_size_um else []
    sizes = [None] * (len(spatial) - len(sizes)) + [positive_number(s) for s in sizes]
    return data, axes, names, dict(zip(spatial, sizes))

