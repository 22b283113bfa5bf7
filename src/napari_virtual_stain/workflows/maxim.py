"""The MAXIM/QC workflow: settings -> problems(action) -> one action -> its result -> layers.

The MAXIM dock and the ``impute``, ``cell-scores``, ``qc`` and ``train-imputers`` commands
describe a run as :class:`MaximSettings` (the imputers' folder, the target marker, the
device, the cell and training choices) and the markers as :class:`MarkerInput` (one 2D
image per marker, or one (C, Y, X) stack with its names), and call the same action here.
So the same choices load the same imputers and give the same numbers whichever door was
used: a one-marker action (impute, attribution, cell evaluation) loads that marker's
imputer alone, the QC loads them all, and both doors treat a folder without imputers alike.
``workflows.maxim_results`` turns the results into layer data tuples and sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from psygnal import evented

from ..errors import CheckpointError, InputError, VirtualStainError
from ..tasks import maxim as task
from ..tasks.region import Region
from .settings_files import Remembered

IMPUTE, QC, ATTRIBUTION, CELLS, TRAIN = "Imputation", "Stain QC", "Attribution", "Cell evaluation", "Training imputers"
ONE_MARKER = (IMPUTE, ATTRIBUTION, CELLS)  # actions that need one marker's imputer, and load only it
ACTIONS = (IMPUTE, QC, ATTRIBUTION, CELLS, TRAIN)
MAX_PATCH = 96  # the joint imputer's training patch on a stack large enough for it


@dataclass
class MarkerInput:
    """The markers a run reads: one 2D image per marker (``separate``, e.g. napari layers) or
    one (C, Y, X) stack. Checked from shapes and dtypes alone (:meth:`problems`); the stack
    is assembled by :meth:`read`, in the worker."""

    data: Any  # a (C, Y, X) array, or a sequence of (Y, X) arrays
    names: Sequence[str]
    separate: bool = False

    @classmethod
    def from_stack(cls, stack, names: Sequence[str] | None = None) -> "MarkerInput":
        """A stack and its marker names (none given: C0, C1, ...)."""
        return cls(stack, list(names or [f"C{i}" for i in range(int(np.shape(stack)[0]))]))

    @classmethod
    def from_planes(cls, planes: Sequence, names: Sequence[str]) -> "MarkerInput":
        return cls(list(planes), list(names), separate=True)

    def check(self) -> list[str]:
        """The marker names, or the InputError sentence of what is wrong with the markers."""
        if self.separate:
            if not self.names:
                raise InputError("Choose the marker layers (at least two) first.")
            return task.check_channels(self.data, self.names)
        return task.check_marker_stack(self.data, self.names)

    def problems(self) -> list[str]:
        try:
            self.check()
        except VirtualStainError as err:
            return [str(err)]
        return []

    def read(self) -> tuple[np.ndarray, list[str]]:
        """The (C, Y, X) stack and its names (the inputs are never modified)."""
        if self.separate:
            return task.stack_from_channels(self.data, self.names)
        return np.asarray(self.data), self.check()


@evented
@dataclass
class MaximSettings(Remembered):
    """What a MAXIM action needs besides the markers: the same for the dock and the commands.

    ``folder``: the imputers (a joint imputer, or one file per marker; ``train-imputers``
    writes there); "" none. ``marker``: the target of a one-marker action; ``missing``:
    input markers fed as zeros (known failed stains). Cells: grown by ``expand`` pixels,
    positive above ``threshold`` (None: Otsu on the acquired cell means). Training: for
    ``minutes`` and/or ``steps`` (whichever ends first) on ``patch`` (None: fits the stack,
    :data:`MAX_PATCH` at most) with a U-Net of ``base`` features and ``depth`` poolings.
    """

    folder: str = ""
    marker: str | None = None
    missing: tuple[str, ...] = ()
    device: str = "auto"
    expand: int = 0
    threshold: float | None = None
    minutes: float | None = 4.0
    steps: int | None = None
    patch: int | None = None
    batch_size: int = 8
    base: int = 16
    depth: int = 3

    def imputer_folder(self) -> str | None:
        folder = str(self.folder or "").strip()
        return None if folder in ("", ".") else folder

    def problems(self, action: str) -> list[str]:
        """Sentences for what would stop ``action``, cheapest checks only (no imputer is read)."""
        from ..engine.device import resolve_device

        if action not in ACTIONS:
            raise ValueError(f"not a MAXIM action: {action!r}")
        found = []
        try:
            resolve_device(self.device)
        except VirtualStainError as err:
            found.append(str(err))
        folder = self.imputer_folder()
        if action == TRAIN:
            if folder is None:
                found.append("Choose the folder the imputers are written to first.")
            if not self.minutes and not self.steps:
                found.append("Give the joint imputer a time budget (minutes) or a number of steps.")
            if self.patch is not None and self.patch < 1:
                found.append(f"The training patch must be at least 1 pixel, not {self.patch}.")
            return found
        if action in ONE_MARKER and (folder is None or not self.marker):
            found.append("Choose a folder of imputers and the target marker first.")
        elif folder is not None and not Path(folder).is_dir():
            found.append(f"There is no model folder at {folder}.")
        if action in ONE_MARKER and self.marker and self.marker in self.missing:
            found.append(f"{self.marker} is the marker to impute and is also given as missing: the missing "
                         "markers are the other inputs that failed.")
        if action == CELLS:
            if self.expand < 0:
                found.append(f"Nuclei can be grown by 0 or more pixels, not {self.expand}.")
            if self.threshold is not None and not 0 <= self.threshold <= 1:
                found.append(f"The positive-cell threshold is a normalised marker level between 0 and 1, "
                             f"not {self.threshold}.")
        return found

    def validate(self, action: str) -> None:
        problems = self.problems(action)
        if problems:
            raise InputError(problems[0])

    def train_config(self, spatial: Sequence[int]):
        """The joint imputer's training configuration for a stack of this (Y, X) size."""
        from ..training.joint_imputer import JointImputerConfig

        patch = self.patch or fitting_patch(spatial)
        return JointImputerConfig(minutes=self.minutes or None, steps=self.steps or None, patch=int(patch),
                                  batch_size=self.batch_size, base=self.base, depth=self.depth,
                                  max_width=self.base * 2 ** self.depth, device=self.device)


def fitting_patch(spatial: Sequence[int]) -> int:
    """A training patch that leaves room for the held-out region below it: half the stack's
    shorter side in steps of 16, between 16 and :data:`MAX_PATCH`."""
    return int(min(MAX_PATCH, max(16, (min(int(s) for s in spatial) // 2) // 16 * 16)))


def imputer_markers(folder: str | None) -> list[str]:
    """The markers the folder has imputers for (none for no folder or one without imputers)."""
    if not folder or str(folder) in ("", "."):
        return []
    try:
        return list(task.find_imputers(folder))
    except VirtualStainError:
        return []


# ---- the actions (no Qt: run in the dock's worker or the command itself) ---------------------

def load_imputer(settings: MaximSettings, problems: list[str] | None = None) -> tuple:
    """``(model, card)`` of the target marker's imputer alone; unreadable files beside it in ``problems``."""
    return task.load_imputer(settings.imputer_folder(), settings.marker, problems)


def impute(settings: MaximSettings, markers: MarkerInput, *, region: Region | None = None,
           problems: list[str] | None = None, imputer: tuple | None = None, progress=None,
           cancel=None) -> task.ImputeResult:
    """Impute the target marker over ``region`` (all by default), ``missing`` markers zeroed.
    ``imputer``: what :func:`load_imputer` gave (loaded once for many stacks)."""
    settings.validate(IMPUTE)
    stack, names = markers.read()
    model, card = imputer if imputer is not None else load_imputer(settings, problems)
    return task.impute_marker(model, card, stack, names, region=region, missing=settings.missing,
                              device=settings.device, progress=progress, cancel=cancel)


def attribute(settings: MaximSettings, markers: MarkerInput, *, region: Region | None = None,
              progress=None, cancel=None):
    """Which input markers drive the target's imputation (integrated gradients over a window).
    On the CPU, as it always ran: gradients of a small window, and the GPU stays free."""
    from ..tasks.maxim_attribution import attribute_marker

    settings.validate(ATTRIBUTION)
    stack, names = markers.read()
    model, card = load_imputer(settings)
    return attribute_marker(model, card, stack, names, region=region, missing=settings.missing, progress=progress,
                            cancel=cancel)


def evaluate_cells(settings: MaximSettings, markers: MarkerInput, labels, *, problems: list[str] | None = None,
                   progress=None, cancel=None):
    """The target's imputation scored cell by cell against the acquired marker (paper 003),
    next to the BL-Mean and BL-Zero baselines; ``labels``: nuclei of the stack's size."""
    from ..tasks.maxim_cells import score_imputer_on_cells

    settings.validate(CELLS)
    stack, names = markers.read()
    model, card = load_imputer(settings, problems)
    return score_imputer_on_cells(model, card, stack, names, np.asarray(labels), expand_px=settings.expand,
                                  threshold=settings.threshold, device=settings.device, progress=progress,
                                  cancel=cancel)


def load_qc_imputers(settings: MaximSettings) -> tuple[dict, list[str]]:
    """``({marker: (model, card)}, warnings)`` for the QC: every imputer of the folder.

    No folder, or a folder without model files (one chosen to train into), gives none: the
    training-free checks still run, and the warnings say why no imputer did. So do imputer
    files that do not load; a folder whose model files are all unusable for another reason
    (two imputers of one marker, stain models) is an error.
    """
    folder = settings.imputer_folder()
    if folder is None:
        return {}, []
    if not any(Path(folder).glob("*.pt")):
        return {}, [f"{folder} holds no imputers (train them first); only the training-free checks ran"]
    problems: list[str] = []
    try:
        return task.load_imputers(folder, problems), problems
    except CheckpointError as err:
        if not problems:
            raise
        return {}, problems + [f"no imputer could be used ({err}); only the training-free checks ran"]


def qc(settings: MaximSettings, markers: MarkerInput, *, region: Region | None = None,
       imputers: tuple[dict, list[str]] | None = None, progress=None, cancel=None):
    """QC every marker (``tasks.maxim_qc.run_qc``) over ``region`` (all by default): the
    training-free checks always, the imputation check where the folder has a good imputer.
    ``imputers``: what :func:`load_qc_imputers` gave (loaded once for many stacks)."""
    from ..tasks.maxim_qc import run_qc

    settings.validate(QC)
    stack, names = markers.read()
    loaded, warnings = imputers if imputers is not None else load_qc_imputers(settings)
    report = run_qc(stack, names, loaded, region=region, device=settings.device, progress=progress, cancel=cancel)
    report.warnings[:0] = warnings  # what did not load is named in every report
    return report


def check_overwrite(settings: MaximSettings, overwrite: bool) -> None:
    from ..tasks.maxim_joint import JOINT_FILE

    folder = settings.imputer_folder()
    if folder is not None and (Path(folder) / JOINT_FILE).exists() and not overwrite:
        raise InputError(f"{folder} already holds {JOINT_FILE}: choose another folder, or replace it with "
                         "--overwrite.")


def train(settings: MaximSettings, markers: MarkerInput, *, overwrite: bool = True, progress=None, cancel=None):
    """Train the joint imputer on a well-stained stack; writes ``<folder>/joint-imputer.pt``."""
    from ..training.joint_imputer import train_joint_imputer

    settings.validate(TRAIN)
    check_overwrite(settings, overwrite)
    stack, names = markers.read()
    config = settings.train_config(stack.shape[1:])
    return train_joint_imputer(stack, names, settings.imputer_folder(), config=config, progress=progress,
                               cancel=cancel)
