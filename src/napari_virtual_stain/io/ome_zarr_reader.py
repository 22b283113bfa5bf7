"""Reading OME-Zarr (NGFF 0.4 and 0.5) through the ``ome-zarr`` library: images, pyramids, plates.

* :func:`read_ome_zarr` — one multiscale image (a store, or one field of a plate given by its
  path, e.g. ``plate.zarr/A/1/0``) as a :class:`~.tiff_reader.LoadedImage`: ``data`` is the
  full-resolution level as a lazy dask array, ``extra["levels"]`` every level (full resolution
  first, same canonical axes) and ``extra["level_downsample"]`` each level's factor per spatial
  axis relative to the first. Opening reads metadata only, never pixels.
* :func:`plate_fields` — the paths of every field of an HCS plate (or well), in plate order.
* :func:`open_ome_zarr` — what napari opens: an image, or every field of a plate or well.

The metadata is parsed by ``ome_zarr`` (zarr v2 and v3 stores, the ``ome`` namespace of
0.5); this module only maps NGFF axes and units onto the project's canonical axes and
micrometres, and turns problems into one-sentence :class:`ReaderError`\\ s.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import ReaderError
from .tiff_metadata import SPATIAL_AXES, bool_as_uint8, to_canonical_order, unit_factor
from .tiff_reader import LoadedImage, level_downsample

# Files that make a folder a zarr group or array (v3 and v2).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")


def is_zarr_folder(path: str | os.PathLike) -> bool:
    """True for a folder that is a zarr group or array (by its metadata files, not its name)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _ZARR_MARKERS)


@contextlib.contextmanager
def _quiet_ome_zarr():
    """ome_zarr tries its newest format first and logs a "version mismatch" warning for every
    older store it then reads correctly: noise for the user, so it is kept quiet here."""
    logger = logging.getLogger("ome_zarr.io")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _location(path: Path):
    from ome_zarr.io import parse_url

    if not path.exists():
        raise ReaderError(f"There is no OME-Zarr store {str(path)!r}.")
    if not is_zarr_folder(path):
        raise ReaderError(f"{path.name} is a folder, but not a zarr store (it has no zarr metadata).")
    try:
        with _quiet_ome_zarr():
            location = parse_url(str(path), mode="r")
    except Exception as err:  # zarr raises many types for damaged metadata
        raise ReaderError(f"{path.name} is a damaged zarr store: its metadata could not be read.") from err
    if location is None:
        raise ReaderError(f"{path.name} could not be opened as a zarr store.")
    return location


def _kind(attrs: dict) -> str:
    for kind in ("plate", "well", "multiscales"):
        if kind in attrs:
            return kind
    return ""


def _not_ome(path: Path) -> ReaderError:
    return ReaderError(f"{path.name} is a zarr store but not an OME-Zarr image: it has no multiscales, "
                       "plate or well metadata.")


def _axis_letter(axis: dict, path: Path) -> str:
    name = str(axis.get("name", "")).lower()
    kind = str(axis.get("type", "")).lower()
    if kind == "time" or name == "t":
        return "T"
    if kind == "channel" or name == "c":
        return "C"
    if name in ("z", "y", "x"):
        return name.upper()
    raise ReaderError(f"{path.name} has an axis {name!r} ({kind or 'no type'}) that is not time, channel, z, y or x.")


def _pixel_size(axes: list[dict], letters: str, transforms) -> tuple[float | None, ...] | None:
    """Micrometres per pixel of the full-resolution level, per spatial axis (None where unknown)."""
    scale = None
    for t in (transforms or [None])[0] or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [float(v) for v in t["scale"]]
    if scale is None or len(scale) != len(axes):
        return None
    sizes = []
    for axis, letter, value in zip(axes, letters, scale):
        if letter not in SPATIAL_AXES:
            continue
        # Without a unit the scale is in unknown units: say nothing rather than guess micrometres.
        factor = unit_factor(axis.get("unit"))
        sizes.append(float(f"{value * factor:.12g}") if factor and value > 0 else None)
    return tuple(sizes) if any(sizes) else None


def _image_node(location, path: Path):
    from ome_zarr.reader import Multiscales, Node

    try:
        with _quiet_ome_zarr():
            node = Node(location, [location])
    except ReaderError:
        raise
    except Exception as err:  # ome_zarr raises ValueError/KeyError for invalid metadata
        raise ReaderError(f"{path.name} has OME-Zarr metadata that does not follow the NGFF specification "
                          f"({type(err).__name__}: {err}).") from err
    if node.first(Multiscales) is None or not node.data:
        raise _not_ome(path)
    return node


def read_ome_zarr(path: str | os.PathLike) -> LoadedImage:
    """One OME-Zarr multiscale image (a store, or a field path inside a plate), lazily.

    Raises :class:`ReaderError` for a folder that is not zarr, a zarr store without OME
    metadata, or a plate or well (open one of :func:`plate_fields` instead).
    """
    path = Path(path)
    location = _location(path)
    kind = _kind(location.root_attrs)
    if kind in ("plate", "well"):
        fields = plate_fields(path)
        raise ReaderError(f"{path.name} is an HCS {kind} of {len(fields)} field(s): open one field "
                          f"(for example {fields[0]}) or give the whole {kind} to `virtual-stain predict`.")
    if not kind:
        raise _not_ome(path)
    node = _image_node(location, path)
    axes = list(node.metadata.get("axes") or [])
    if len(axes) != node.data[0].ndim:
        raise ReaderError(f"{path.name} declares {len(axes)} axes for an array of {node.data[0].ndim} dimensions.")
    letters = "".join(_axis_letter(a, path) for a in axes)
    if len(set(letters)) != len(letters) or not {"Y", "X"} <= set(letters):
        raise ReaderError(f"{path.name} has axes {letters}, which are not a (time, channel, z, y, x) image.")
    levels = []
    canonical = letters
    for level in node.data:
        level, canonical = to_canonical_order(bool_as_uint8(level), letters)
        levels.append(level)
    if 0 in levels[0].shape:
        raise ReaderError(f"{path.name} contains an empty image (shape {levels[0].shape}): there are no pixels to show.")
    n_channels = int(levels[0].shape[canonical.index("C")]) if "C" in canonical else 0
    names = [str(n) for n in (node.metadata.get("channel_names") or [])]
    if len(names) != n_channels:
        names = [f"C{i}" for i in range(n_channels)]
    sizes = _pixel_size([axes[letters.index(a)] for a in canonical], canonical,
                        _reordered(node.metadata.get("coordinateTransformations"), letters, canonical))
    return LoadedImage(
        data=levels[0], axes=canonical, channel_names=names, pixel_size_um=sizes, source_path=str(path),
        extra={"format": f"ome-zarr {location.version}", "lazy": True, "levels": levels,
               "level_downsample": level_downsample(levels, canonical)},
    )


def _reordered(transforms, letters: str, canonical: str):
    """Scale vectors of each level put in canonical axis order (NGFF order is canonical already)."""
    if not transforms or letters == canonical:
        return transforms
    order = [letters.index(a) for a in canonical]
    out = []
    for level in transforms:
        out.append([dict(t, scale=[t["scale"][i] for i in order]) if t.get("type") == "scale" else t
                    for t in (level or [])])
    return out


def _field_paths_of_well(path: Path, well_attrs: dict, prefix: str) -> list[str]:
    images = (well_attrs.get("well") or {}).get("images") or []
    return [f"{prefix}{image['path']}" for image in images if isinstance(image, dict) and "path" in image]


def plate_fields(path: str | os.PathLike) -> list[str]:
    """Every field of the HCS plate (or well) at ``path``, as paths to open with :func:`read_ome_zarr`.

    Fields come in the plate's well order, then the well's image order. Raises
    :class:`ReaderError` when the store is not a plate or well, or a listed well or field is missing.
    """
    path = Path(path)
    location = _location(path)
    attrs = location.root_attrs
    kind = _kind(attrs)
    if kind == "well":
        relative = _field_paths_of_well(path, attrs, "")
    elif kind == "plate":
        relative = []
        for well in (attrs["plate"].get("wells") or []):
            well_path = str(well.get("path", ""))
            if not is_zarr_folder(path / well_path):
                raise ReaderError(f"The plate {path.name} lists the well {well_path}, but it is not in the store.")
            relative.extend(_field_paths_of_well(path / well_path, _location(path / well_path).root_attrs,
                                                 f"{well_path}/"))
    else:
        raise ReaderError(f"{path.name} is not an HCS plate or well (its zarr metadata lists no wells or fields).")
    if not relative:
        raise ReaderError(f"The {kind} {path.name} lists no fields of view.")
    missing = [r for r in relative if not is_zarr_folder(path / r)]
    if missing:
        raise ReaderError(f"The {kind} {path.name} lists the field {missing[0]}, but it is not in the store"
                          + (f" ({len(missing)} fields are missing)." if len(missing) > 1 else "."))
    return [str(path / r) for r in relative]


def is_plate(path: str | os.PathLike) -> bool:
    """True for the root of an HCS plate or well (an OME-Zarr store of several fields)."""
    path = Path(path)
    if not is_zarr_folder(path):
        return False
    return _kind(_location(path).root_attrs) in ("plate", "well")


def open_ome_zarr(path: str | os.PathLike) -> list[LoadedImage]:
    """An OME-Zarr image, or every field of a plate or well (each its own image)."""
    if is_plate(path):
        return [read_ome_zarr(p) for p in plate_fields(path)]
    return [read_ome_zarr(path)]
