"""Write a set of output files all at once or not at all.

A command that fails halfway (a full disk, an unreadable tile, Ctrl-C) must not leave an
empty or half-written output folder that looks like a result. :class:`StagedOutputs` writes
every file into a hidden staging folder beside the destination and moves them into place
only when all were written: a new output folder appears by one rename; into an existing
folder each file is moved by ``os.replace`` (atomic per file), after all were written.
On any error the staging folder is removed and the destination is as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it can become an output folder, else an InputError sentence.

    Touches nothing: safe to call before any work is done.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"The output {path} is a file, not a folder: give a folder for the results.")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise InputError(f"The output folder {path} cannot be made: {ancestor} is a file.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"The output folder {path} cannot be written: {ancestor} is not writable.")
    return path


class StagedOutputs:
    """``with StagedOutputs(folder) as out: write(out.path("a.png"))`` -> all files, or none."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = check_output_folder(folder)
        self.stage: Path | None = None

    def __enter__(self) -> "StagedOutputs":
        # Stage on the same file system as the destination so the final moves are renames.
        where = self.folder if self.folder.is_dir() else _existing_ancestor(self.folder.parent)
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.partial-", dir=where))
        except OSError as err:
            raise InputError(f"The output folder {self.folder} cannot be written: {err.strerror or err}.") from err
        return self

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` for now."""
        assert self.stage is not None, "use StagedOutputs as a context manager"
        return self.stage / name

    def _commit(self) -> None:
        assert self.stage is not None
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
