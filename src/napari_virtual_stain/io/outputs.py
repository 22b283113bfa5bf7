"""Where results go: output paths checked before any work starts, then written all or nothing.

Every command that writes files checks each output with :func:`check_output_file` or
:func:`check_output_folder` *before* it reads a model or runs a network, so a typo in an
output path costs nothing and never leaves a half-finished run behind. The checks refuse:

- an output that is one of the inputs (inputs are never overwritten);
- a file name whose suffix does not say what will be written (``-o out.png`` for a TIFF);
- a folder where a file is wanted, or a file where a folder is wanted;
- a place that cannot be written (read-only, not a folder, no permission): found by really
  creating and removing a file there, since permission bits say nothing for root or on a
  read-only mount;
- two outputs of one command that are the same file.

Three ways to write all or nothing, one naming of temporary files: :func:`atomic_file` writes
one file under a hidden temporary name beside it and renames it over the target (TIFFs,
checkpoints, CSV and GeoJSON tables); :class:`OutputTransaction` stages each file of a command
that way and renames them into place only when all were written; :class:`StagedOutputs` does the same for a whole output folder (DeepLIIF's
set of PNGs, tables and stores), built in a hidden folder beside it. A failure in the last
output leaves neither the first nor a temporary file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import InputError

TIFF_OUTPUT_SUFFIXES = (".tif", ".tiff")
JSON_OUTPUT_SUFFIXES = (".json",)

PathLike = str | os.PathLike


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _nearest_existing(path: Path) -> Path:
    """The deepest ancestor of ``path`` that exists (what a later mkdir would start from)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def _check_writable_place(path: Path, label: str) -> None:
    """Refuse ``path`` when its folder (or the nearest existing ancestor) cannot take a new file."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise InputError(f"Cannot write the {label} {path}: {base} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".virtual-stain-probe-", dir=base)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"Cannot write the {label} {path}: {base} is not writable ({reason.lower()}).") from None
    os.close(fd)
    os.unlink(probe)


def _check_not_an_input(path: Path, inputs: Iterable[PathLike], label: str) -> None:
    for given in inputs:
        if given is None or not Path(given).expanduser().exists():
            continue  # nothing to protect: reading it says that it is missing, the true cause
        given = Path(given).expanduser()
        if _same_file(path, given):
            raise InputError(f"The {label} {path} is also an input: choose another name, "
                             "inputs are never overwritten.")
        if given.is_dir() and path.resolve().is_relative_to(given.resolve()) and given.suffix.lower() == ".zarr":
            raise InputError(f"The {label} {path} lies inside the input {given}: choose a place outside it.")


def refuse_existing(path: Path, overwrite: bool, label: str = "output") -> None:
    """An output that is already there is earlier work: replaced only when the user says so."""
    if not overwrite and (path.exists() or path.is_symlink()):
        raise InputError(f"The {label} {path} already exists; add --overwrite to replace it.")


def check_output_file(path: PathLike, *, inputs: Iterable[PathLike] = (),
                      suffixes: Sequence[str] | None = TIFF_OUTPUT_SUFFIXES, label: str = "output",
                      overwrite: bool = True) -> Path:
    """Check that a command may write the file ``path``; returns it as a Path.

    ``suffixes``: the endings the file may have (None: any), e.g. ``(".tif", ".tiff")``;
    ``overwrite`` False refuses a file that exists (the commands' ``--overwrite`` flag).
    """
    if path is None or str(path).strip() == "":
        raise InputError(f"The {label} file name is empty.")
    path = Path(path).expanduser()
    if suffixes is not None and not path.name.lower().endswith(tuple(suffixes)):
        wanted = " or ".join(suffixes)
        raise InputError(f"The {label} {path.name} must end in {wanted}: that is the format written.")
    if path.is_dir():
        raise InputError(f"The {label} {path} is a folder; give a file name.")
    if path.exists() and not path.is_file():
        raise InputError(f"The {label} {path} exists and is not a regular file.")
    _check_not_an_input(path, inputs, label)
    refuse_existing(path, overwrite, label)
    _check_writable_place(path, label)
    return path


def check_output_folder(path: PathLike, *, inputs: Iterable[PathLike] = (), label: str = "output folder") -> Path:
    """Check that a command may create or fill the folder ``path``; returns it as a Path."""
    if path is None or str(path).strip() == "":
        raise InputError(f"The {label} name is empty.")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"The {label} {path} is a file, not a folder: give a folder for the results.")
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise InputError(f"The {label} {path} is also an input: choose another folder.")
    _check_writable_place(path / "x", label)
    return path


def check_distinct(paths: dict[str, PathLike | None]) -> None:
    """Refuse two outputs of one command that name the same file (``{label: path}``)."""
    seen: dict[Path, str] = {}
    for label, path in paths.items():
        if path is None:
            continue
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise InputError(f"The {seen[key]} and the {label} are the same file ({path}): give each its own name.")
        seen[key] = label


def hidden_sibling(path: Path, ending: str = ".tmp") -> Path:
    """A hidden temporary name beside ``path``, unique to this process and call, ending in ``ending``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{ending}")


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """``with atomic_file(path) as tmp: write(tmp)``: ``path`` gets all of it or keeps what it was.

    The block writes a hidden file beside ``path`` (same file system: the final move is a
    rename) that ends in ``.tmp``, so a file left by a killed process is never taken for a
    result (a TIFF or a model by its ending); on a clean exit it replaces ``path``, on an
    exception it is removed and ``path`` is untouched. Parent folders must exist.
    """
    path = Path(path).expanduser()
    tmp = hidden_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OutputTransaction:
    """Stage several output files and move them into place together.

    ``stage(path)`` returns a hidden temporary path beside ``path`` with the same ending (so
    writers that look at the suffix, e.g. ``.ome.tif``, behave the same). On a clean exit of
    the ``with`` block every staged file is renamed over its target; on an exception every
    staged file is removed and no target is touched.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._made_dirs: list[Path] = []

    def stage(self, path: PathLike) -> Path:
        path = Path(path).expanduser()
        missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._made_dirs.extend(reversed(missing))  # deepest first is reversed order of parents
        ending = "".join(path.suffixes[-2:]) if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else path.suffix
        stem = path.name[: len(path.name) - len(ending)] if ending else path.name
        tmp = hidden_sibling(path.with_name(stem), f".tmp{ending}")
        self._staged.append((tmp, path))
        return tmp

    def write_text(self, path: PathLike, text: str) -> None:
        self.stage(path).write_text(text, encoding="utf-8")

    def commit(self) -> None:
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged.clear()

    def abort(self) -> None:
        for tmp, _ in self._staged:
            Path(tmp).unlink(missing_ok=True)
        self._staged.clear()
        for folder in sorted(self._made_dirs, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()  # only folders this transaction created, and only if empty
            except OSError:
                pass
        self._made_dirs.clear()

    def __enter__(self) -> "OutputTransaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextmanager
def staged_together(targets: Sequence[PathLike]) -> Iterator[list[Path]]:
    """Where the tasks of one run write ``targets`` so that all of them appear at the end, or none.

    Several targets in one folder are written into a hidden staging folder beside them
    (:class:`StagedOutputs`) and moved in together when the block ends without an error; a
    failure in the last task removes the earlier tasks' results and leaves the folder as it
    was, files that were there before included. A single target is written where it is (each
    writer is atomic on its own).
    """
    targets = [Path(t).expanduser() for t in targets]
    folders = {t.parent for t in targets}
    if len(targets) < 2 or len(folders) != 1:
        yield targets
        return
    with StagedOutputs(folders.pop()) as out:
        yield [out.path(t.name) for t in targets]


def write_json_atomic(path: PathLike, payload, **dump_kwargs) -> Path:
    """Write ``payload`` as JSON to ``path`` through a temporary file: all or nothing."""
    with OutputTransaction() as tx:
        tx.write_text(path, json.dumps(payload, **dump_kwargs))
    return Path(path)


class StagedOutputs:
    """``with StagedOutputs(folder) as out: write(out.path("a.png"))``: all files of a folder, or none.

    Files are written into a hidden staging folder beside the destination (same file system,
    so the final moves are renames). A new output folder appears by one rename; into an
    existing folder each file is moved by ``os.replace`` after all were written. On any
    error the staging folder is removed and the destination is as it was.
    """

    def __init__(self, folder: PathLike, inputs: Iterable[PathLike] = ()):
        self.folder = check_output_folder(folder, inputs=inputs)
        self.stage: Path | None = None

    def __enter__(self) -> "StagedOutputs":
        where = self.folder if self.folder.is_dir() else _nearest_existing(self.folder.parent)
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.partial-", dir=where))
        except OSError as err:
            raise InputError(f"The output folder {self.folder} cannot be written: {err.strerror or err}.") from err
        return self

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` for now."""
        if self.stage is None:
            raise RuntimeError("use StagedOutputs as a context manager")
        return self.stage / name

    def _commit(self) -> None:
        if not self.folder.exists():
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.stage, self.folder)
            return
        for item in sorted(self.stage.iterdir()):
            target = self.folder / item.name
            if item.is_dir() and target.is_dir():  # e.g. a zarr store from an earlier run
                shutil.rmtree(target)
            os.replace(item, target)
        self.stage.rmdir()

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            try:
                self._commit()
                self.stage = None
                return False
            except OSError as err:
                self._discard()
                raise InputError(f"The results could not be moved into {self.folder}: {err.strerror or err}.") from err
        self._discard()
        return False

    def _discard(self) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None
