"""Where the docks remember their last settings (beside the user's model folder), and how.

Every workflow's settings class saves itself as one JSON object and loads back whatever of
it still fits: a missing, unknown or unreadable value gives the default, never an error
(remembering is a convenience, never a reason a dock cannot open).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

from ..io.outputs import write_json_atomic
from ..models.registry import user_model_dir


SETTINGS_DIR_ENV = "NAPARI_VIRTUAL_STAIN_SETTINGS"


def settings_file(workflow: str) -> Path:
    """``<user folder>/settings/<workflow>.json`` (``~/.napari-virtual-stain/settings/stain.json``),
    or in the folder ``$NAPARI_VIRTUAL_STAIN_SETTINGS`` names (tests: never the user's own)."""
    folder = os.environ.get(SETTINGS_DIR_ENV)
    return (Path(folder) if folder else user_model_dir().parent / "settings") / f"{workflow}.json"


class Remembered:
    """``save``/``load`` for a settings dataclass (mix in before ``@evented @dataclass``)."""

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """The settings saved at ``path``; defaults for anything missing, unknown or unreadable."""
        try:
            saved = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(saved, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in known}
        try:
            settings = cls(**values)
        except (TypeError, ValueError):
            return cls()
        return settings

    def copy(self):
        """An independent snapshot (a worker's own: the user may change the dock meanwhile)."""
        return type(self)(**asdict(self))

    def remember(self, workflow: str):
        """A snapshot for a run (the worker's own: the user may change the dock meanwhile),
        saved as the ``workflow``'s last settings; a folder that cannot be written is no
        reason not to run."""
        snapshot = self.copy()
        try:
            snapshot.save(settings_file(workflow))
        except OSError:
            pass
        return snapshot
