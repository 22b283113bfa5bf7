"""Where the docks remember their last settings: beside the user's model folder."""

from __future__ import annotations

from pathlib import Path

from ..models.registry import user_model_dir


def settings_file(workflow: str) -> Path:
    """``<user folder>/settings/<workflow>.json`` (``~/.napari-virtual-stain/settings/stain.json``)."""
    return user_model_dir().parent / "settings" / f"{workflow}.json"
