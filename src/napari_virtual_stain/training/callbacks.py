"""Training callbacks: what the ``Trainer`` does around its steps, as public objects.

``Trainer.run`` calls, for each callback in order, ``on_validation(trainer, info)`` after
every validation (before the first step, every ``val_every`` steps and at the end),
``on_step(trainer, info)`` after every step and ``on_end(trainer, result)`` once the best
weights are back in the model. A callback ends the run with ``trainer.request_stop(reason)``
(the run stops after the current step, as on Stop, and records the reason).

Built in, made from ``run``'s arguments and the config (``default_callbacks``):
``SaveBestModel`` (``config.best_path``), ``SaveLastState`` (``config.last_path`` every
``checkpoint_every`` steps), ``EarlyStop`` (``config.patience``), ``ReportProgress``
(``progress``) and ``ReportUpdates`` (``on_update``, with the preview every
``preview_every`` steps). The planned steps, the time limit and Stop stay in the loop: the
learning-rate schedule and the progress fraction are computed from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import TrainUpdate


@dataclass
class StepInfo:
    """What the loop knows after a step."""

    step: int
    total_steps: int | None
    losses: dict  # the strategy's losses, and "skipped"
    lr: float
    elapsed_s: float
    sec_per_step: float
    eta_s: float | None
    fraction: float  # of the planned steps or minutes, whichever is further along
    time_limited: bool  # a time limit was set: progress runs in thousandths of the run
    val_loss: float | None = None  # the latest validation (None before the first)
    val_step: int | None = None
    scores: dict | None = None  # validation scores, when validated at this step


@dataclass
class ValidationInfo:
    step: int
    loss: float
    scores: dict = field(default_factory=dict)
    improved: bool = False  # the best so far: the trainer now keeps these weights


class Callback:
    """Base class: override the hooks you need; each does nothing by default."""

    def on_step(self, trainer, info: StepInfo) -> None:
        pass

    def on_validation(self, trainer, info: ValidationInfo) -> None:
        pass

    def on_end(self, trainer, result) -> None:
        pass


class SaveBestModel(Callback):
    """Write the best model to ``path`` whenever a validation improves on it."""

    def __init__(self, path):
        self.path = Path(path)

    def on_validation(self, trainer, info):
        # Not before the first trained step: the file at the path (a model the user had, with
        # --overwrite) is kept until this run has trained weights to put in its place.
        if info.improved and info.step > 0:
            trainer.save_model(self.path, trainer.best_state)


class SaveLastState(Callback):
    """Write the current model and its resume state to ``path`` every ``every`` steps."""

    def __init__(self, path, every: int):
        self.path, self.every = path, int(every)

    def on_step(self, trainer, info):
        if info.step % self.every == 0:
            trainer.save(self.path, best=False)


class EarlyStop(Callback):
    """Stop after ``patience`` validations in a row without a new best (paper 003)."""

    def __init__(self, patience: int):
        self.patience = int(patience)

    def on_validation(self, trainer, info):
        # The trainer's EarlyStopping counts the validations without improvement (and keeps the
        # count in the resume state), so a resumed run goes on counting where it was.
        if trainer.stopper.bad_rounds >= self.patience:
            trainer.request_stop("early_stopping")


class ReportProgress(Callback):
    """``progress(done, total)``: steps of the planned steps, or thousandths of a timed run."""

    def __init__(self, progress: Callable[[int, int], None]):
        self.progress = progress

    def on_step(self, trainer, info):
        if info.total_steps is not None and not info.time_limited:
            self.progress(info.step, info.total_steps)
        else:
            self.progress(int(round(1000 * info.fraction)), 1000)


class ReportUpdates(Callback):
    """``on_update(TrainUpdate)`` after every step, with a preview every ``preview_every`` steps."""

    def __init__(self, on_update: Callable[[TrainUpdate], None], preview_every: int):
        self.on_update, self.preview_every = on_update, int(preview_every)

    def on_step(self, trainer, info):
        losses = info.losses
        best = trainer.stopper.best
        self.on_update(TrainUpdate(
            step=info.step, total_steps=info.total_steps, train_loss=losses["train_loss"],
            val_loss=info.val_loss, val_step=info.val_step, best_val_loss=best if math.isfinite(best) else None,
            sec_per_step=info.sec_per_step, eta_s=info.eta_s, elapsed_s=info.elapsed_s, lr=info.lr,
            critic_loss=losses.get("critic_loss"), gen_adv_loss=losses.get("gen_adv_loss"),
            wasserstein=losses.get("wasserstein"), gradient_penalty=losses.get("gradient_penalty"),
            preview=trainer.preview() if info.step % self.preview_every == 0 else None,
            scores=info.scores, skipped=bool(losses.get("skipped", False))))


def default_callbacks(config, progress=None, on_update=None) -> list[Callback]:
    """The built-in callbacks for ``config`` and ``run``'s arguments, in the order they always ran."""
    out: list[Callback] = []
    if config.best_path:
        out.append(SaveBestModel(config.best_path))
    if config.patience is not None:
        out.append(EarlyStop(config.patience))
    if config.checkpoint_every and config.last_path:
        out.append(SaveLastState(config.last_path, config.checkpoint_every))
    if progress is not None:
        out.append(ReportProgress(progress))
    if on_update is not None:
        out.append(ReportUpdates(on_update, config.preview_every))
    return out
