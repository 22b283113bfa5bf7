"""What becomes of a fine-tuning run: saving, bioimage.io export, an abandoned run kept, previews, sentences.

No Qt: the Fine-tune dock asks its questions (replace a model? where to export?) and shows
these answers; every decision about names, files and packages is made here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, VirtualStainError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
REASONS = {"stopped": "stopped", "early_stopping": "early stopping", "minutes": "time limit", "steps": "all steps done"}


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a saved model (one sentence), or None."""
    if not name:
        return "Type a name for the model in 'save as' first."
    if not NAME.fullmatch(name) or name.endswith(".state"):  # x.state.pt is a training state file
        return (f"'{name}' cannot be a model name: use up to 100 letters, digits, '-', '_' and '.', starting "
                "with a letter or digit and without slashes (for example 'my-model').")
    return None


def replace_question(name: str) -> str | None:
    """What to ask before a save under ``name`` replaces or shadows a model (None: nothing to ask)."""
    from ..models.registry import list_models

    existing = next((e for e in list_models() if e.name == name), None)
    if existing is None:
        return None
    if existing.source == "user":
        return f"A model called '{name}' is already in your model folder. Replace it?"
    return f"'{name}' is a bundled model; a model saved under that name is used instead of it. Save anyway?"


def save_model(trainer, name: str) -> Path:
    """The trained model as ``<user folder>/<name>.pt`` (the Virtual Stain dock lists it at once)."""
    from ..models.registry import notify_models_changed, user_model_dir

    problem = name_problem(name)
    if problem:
        raise InputError(problem)
    trainer.card.name = name
    try:
        path = trainer.save(user_model_dir() / f"{name}.pt")
    except OSError as err:
        raise InputError(f"Could not write the model to {user_model_dir()}: {err.strerror or err}.") from None
    notify_models_changed()
    return path


def export_problems(card) -> list[str]:
    """Sentences for what stops a bioimage.io export of a model with this card (the export's own rule)."""
    from ..models.zwindow import z_window

    window = z_window(card)
    if window is not None:  # its network takes C x planes channels; the description would name only C
        return [f"{card.name} is a 2.5D model (a window of {window.planes} z planes in, one plane out), which "
                "bioimage.io export cannot describe yet: share its .pt file instead."]
    return []


def export_model(trainer, name: str):
    """(network, card) of the best weights so far under ``name``, ready for :func:`write_package`."""
    from ..models.factory import build_model

    card = trainer.trained_card()
    card.name = name
    problems = export_problems(card)
    if problems:
        raise InputError(problems[0])
    model = build_model(card.architecture, card.arch_args)
    model.load_state_dict(trainer.best_state)
    return model, card


def write_package(model, card, path, cancel=None) -> Path:
    """Write the package (validated by bioimageio.spec); a worker body."""
    from ..models.bioimageio_export import export_model as export

    return export(model, card, path)


def saved_run(model: str | None) -> Path | None:
    """The model's file if a saved run (its ``.state.pt``) lies beside it, else None (a fresh network's label too)."""
    from ..models.registry import resolve_model
    from .finetune import FRESH_NETWORKS

    if not model or model in FRESH_NETWORKS:
        return None
    try:
        path = resolve_model(model)
    except VirtualStainError:
        return None
    return path if path.with_suffix(".state.pt").is_file() else None


def keep_unsaved(trainer) -> Path | None:
    """A run nobody will see (its dock closed while it trained): its best model and resume
    state kept in the user folder's ``unsaved/`` (not listed with the models). None: nothing trained."""
    from ..models.registry import user_model_dir

    if trainer.step == 0:
        return None
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", trainer.card.name or "fine-tuned").strip("._") or "fine-tuned"
    path = user_model_dir() / "unsaved" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.pt"
    trainer.save(path)
    return path


def preview_patch(trainer, preview: np.ndarray, stack_planes: int | None) -> tuple[np.ndarray, tuple, list[str]]:
    """(preview, start in the source's pixels, layer channel names) of the validation patch's
    preview; ``stack_planes``: the planes of a grey z-stack source (None: a plane or colour image)."""
    data = trainer.val_data if trainer.val_data is not None and len(trainer.val_data) else trainer.train_data
    pair, start = data.fixed_patch_origin()
    if stack_planes is not None and trainer.card.spatial_dims == 2:  # pairs are planes of the stack (2D or 2.5D)
        planes = getattr(trainer, "source_planes", None) or range(stack_planes)
        start, preview = (planes[pair],) + tuple(start), preview[:, None]
    return preview, tuple(start), [f"preview {c}" for c in trainer.card.output_channels]


def describe_update(update) -> str:
    eta = f"{update.eta_s / 60:.1f} min left" if update.eta_s is not None else ""
    val = f" · val {update.val_loss:.4g}" if update.val_loss is not None else ""
    return f"step {update.step} · {update.sec_per_step:.2f} s/step · {eta}{val}"


def describe_result(result) -> str:
    best = (f", best validation loss {result.best_val_loss:.4g} at step {result.best_step}"
            if result.best_val_loss is not None else "")
    return (f"{REASONS.get(result.reason, result.reason)}: {result.steps} steps in {result.seconds / 60:.1f} min"
            f"{best}. Save to use it.")
