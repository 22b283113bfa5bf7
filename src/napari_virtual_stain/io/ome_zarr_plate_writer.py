"""An output HCS plate laid out like an input plate: one prediction per field, written by many tasks.

:func:`plate_layout` reads an input plate's NGFF metadata (rows, columns, wells, each well's
fields, acquisitions, name) through ``ome-zarr``'s reader; :class:`StagedPlate` creates a new
plate with the same layout under a hidden name beside the target, with the plate and well
metadata written by ``ome_zarr.writer.write_plate_metadata`` / ``write_well_metadata``. The
fields are left to the tasks: each writes its own field group (:func:`~.ome_zarr_writer.save_ome_zarr`
into :meth:`StagedPlate.field`), so no two tasks write the same zarr file or chunk, on a cluster
too. Only when every field is written is the plate renamed into place; any failure removes it,
so no half-written plate is ever left at the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import InputError, ReaderError
from .ome_zarr_reader import ZARR_SUFFIXES, _kind, _location
from .ome_zarr_writer import FORMATS, check_output_store


@dataclass
class PlateLayout:
    """What an output plate copies from its input: NGFF plate attributes and each well's images."""

    version: str  # NGFF version written ("0.4": zarr v2, "0.5": zarr v3)
    rows: list[str]
    columns: list[str]
    wells: list[dict]  # the plate's well entries as stored (path, rowIndex, columnIndex)
    images: dict[str, list[dict]] = field(default_factory=dict)  # well path -> its image entries
    name: str | None = None
    field_count: int | None = None
    acquisitions: list[dict] | None = None

    def field_paths(self) -> list[str]:
        """Each field relative to the plate (``A/1/0``), in plate order: the order of ``plate_fields``."""
        return [f"{well['path']}/{image['path']}" for well in self.wells for image in self.images[well["path"]]]


def plate_layout(path: str | os.PathLike) -> PlateLayout:
    """The layout of the HCS plate at ``path`` (its fields are checked by ``plate_fields`` elsewhere)."""
    path = Path(path)
    location = _location(path)
    attrs = location.root_attrs
    if _kind(attrs) != "plate":
        raise ReaderError(f"{path.name} is not an HCS plate (its zarr metadata lists no wells).")
    plate = attrs["plate"]
    images = {}
    for well in plate.get("wells") or []:
        images[well["path"]] = list((_location(path / well["path"]).root_attrs.get("well") or {}).get("images") or [])
    version = str(location.version)
    return PlateLayout(
        version=version if version in FORMATS else FORMATS[-1],
        rows=[str(r["name"]) for r in plate.get("rows") or []],
        columns=[str(c["name"]) for c in plate.get("columns") or []],
        wells=[dict(w) for w in plate.get("wells") or []], images=images,
        name=plate.get("name"), field_count=plate.get("field_count"), acquisitions=plate.get("acquisitions"),
    )


def wants_plate_output(inputs: list, output) -> bool:
    """True when the only input is an HCS plate and the output names a zarr store: write a plate."""
    from .ome_zarr_reader import is_plate

    if len(inputs) != 1 or not str(output).lower().rstrip("/").endswith(ZARR_SUFFIXES):
        return False
    source = Path(str(inputs[0])).expanduser()
    return is_plate(source) and _kind(_location(source).root_attrs) == "plate"


def check_output_plate(path, *, inputs: Iterable = ()) -> Path:
    """Check that a new plate may be written at ``path``; an existing store is refused, never merged."""
    path = check_output_store(path, inputs=inputs, label="output plate")
    if path.exists():
        raise InputError(f"The output plate {path} exists: remove it or choose another name "
                         "(a plate is never overwritten or merged into).")
    return path


class StagedPlate:
    """An output plate built under a hidden name beside ``target`` and renamed into place on success.

    ``with StagedPlate(target, layout) as plate:`` creates the staging plate with every
    well group and its metadata; tasks write the fields at ``plate.field(relative)``; leaving
    the block without an error renames the plate to ``target``, with an error removes it.
    """

    def __init__(self, target: str | os.PathLike, layout: PlateLayout):
        self.target = Path(target)
        self.layout = layout
        self.stage: Path | None = None

    def __enter__(self) -> "StagedPlate":
        import zarr
        from ome_zarr.format import FormatV04, FormatV05
        from ome_zarr.writer import write_plate_metadata, write_well_metadata

        fmt = FormatV05() if self.layout.version == "0.5" else FormatV04()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.stage, 0o777 & ~mask)  # mkdtemp's 0700 would make the finished plate private
            root = zarr.open_group(str(self.stage), mode="w", zarr_format=fmt.zarr_format)
            write_plate_metadata(root, self.layout.rows, self.layout.columns, self.layout.wells, fmt=fmt,
                                 acquisitions=self.layout.acquisitions, field_count=self.layout.field_count,
                                 name=self.layout.name)
            for well in self.layout.wells:
                group = root
                for part in well["path"].split("/"):
                    group = group.require_group(part)
                write_well_metadata(group, self.layout.images[well["path"]], fmt=fmt)
        except BaseException:
            self._discard()
            raise
        return self

    def field(self, relative: str) -> Path:
        """Where the field ``relative`` (``A/1/0``) is written for now: a store path for one task."""
        if self.stage is None:
            raise RuntimeError("use StagedPlate as a context manager")
        return self.stage / relative

    def __exit__(self, kind, error, trace) -> bool:
        if kind is not None:
            self._discard()
            return False
        missing = [r for r in self.layout.field_paths() if not (self.stage / r).is_dir()]
        if missing:
            self._discard()
            raise RuntimeError(f"the plate's field {missing[0]} was not written")
        try:
            os.rename(self.stage, self.target)
        except OSError as err:
            self._discard()
            raise InputError(f"The plate could not be moved to {self.target}: {err.strerror or err}.") from err
        self.stage = None
        return False

    def _discard(self) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None
