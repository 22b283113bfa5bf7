"""A training run's files: the trained model's card, the atomic model save and the resume state.

``save(path)`` writes the best model with an updated card (atomically) and
``path.with_suffix(".state.pt")`` with the last weights, optimiser, step, histories and the
run id that ties the state to its model; ``resume(path)`` reads them back and refuses a state
that belongs to another run.
"""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, plain_text
from ..metrics import mean_scores
from ..models.card import ModelCard
from ..models.checkpoint import atomic_torch_save, save_checkpoint
from .datasets import TARGET_NORMALISATION

STATE_FORMAT = "napari-virtual-stain-train-state/1"
# Loss curves stored in the card are thinned to about this many points.
MAX_HISTORY_POINTS = 200
# TrainConfig fields that say where files go, kept out of the card.
FILE_SETTINGS = ("best_path", "last_path")


def cpu_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _thin(points: list, limit: int = MAX_HISTORY_POINTS) -> list:
    if len(points) <= limit:
        return [list(p) for p in points]
    keep = np.linspace(0, len(points) - 1, limit).round().astype(int)
    return [list(points[i]) for i in keep]


class TrainerFiles:
    """The file half of :class:`~napari_virtual_stain.training.trainer.Trainer` (a mixin)."""

    def trained_card(self) -> ModelCard:
        """The card of the best model: data, settings, steps, time, validation scores."""
        card = copy.deepcopy(self.card)
        training = {k: v for k, v in card.training.items() if k in ("started_from", "previous")}
        training.update({
            "run_id": self.run_id,
            "data": self.train_data.describe(),
            # Where this run wrote its files is not how it trained: without the paths the card is
            # the same whichever door (dock or command line) ran the training.
            "config": {k: v for k, v in self.config.to_dict().items() if k not in FILE_SETTINGS},
            "steps": self.step,
            "best_step": self.stopper.best_step,
            "skipped_steps": self.skipped_steps,
            "seconds": round(self.seconds_before, 1),
            "stopped_by": self.reason,
            "device": str(self.device), "precision": self.precision,
            "torch": str(torch.__version__),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "history": {"train": _thin(self.history["train"]), "val": _thin(self.history["val"])},
        })
        card.training = training
        scores = {k: v for k, v in card.scores.items() if k == "before_fine_tuning"}
        if self.best_scores:
            scores["validation"] = self.best_scores
            scores["validation_mean"] = mean_scores(self.best_scores)
            scores["validation_loss"] = self.stopper.best
        card.scores = scores
        card.extra = dict(card.extra)
        if getattr(self.train_data, "target_stats", None) is None:
            return card  # a batch source in the network's own unit: no per-pair target scaling to record
        card.extra["target_normalisation"] = {
            "spec": TARGET_NORMALISATION,
            "note": "targets were scaled per pair and channel to [0, 1] with these percentiles; "
                    "stats[pair][channel] = {low, high} in the target's own units (None: missing)",
            "stats": [[None if s is None else {"low": s["low"][0], "high": s["high"][0]} for s in pair]
                      for pair in self.train_data.target_stats],
        }
        return card

    def save_model(self, path: Path, state: dict) -> None:
        """Write ``state`` (weights) as a model with the trained card, atomically."""
        model = copy.deepcopy(self.model).cpu()
        model.load_state_dict(state)
        save_checkpoint(path, model, self.trained_card())

    def save(self, path: str | os.PathLike, best: bool = True) -> Path:
        """Write the model (best weights, or the current ones with ``best=False``) and its resume state."""
        path = Path(path)
        state = self.best_state if best else (self.last_state if self.last_state is not None else cpu_state(self.model))
        self.save_model(path, state)
        last = self.last_state if self.last_state is not None else cpu_state(self.model)
        payload = {
            "format": STATE_FORMAT,
            "run_id": self.run_id,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "seconds": self.seconds_before,
            "model": last,
            "optimizer": self.optimizer.state_dict(),
            "critic": cpu_state(self.critic) if self.critic is not None else None,
            "critic_optimizer": self.critic_optimizer.state_dict() if self.critic_optimizer is not None else None,
            "early_stopping": self.stopper.state_dict(),
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "data_state": self.train_data.get_state(),
            "validated": self._validated_once,
        }
        atomic_torch_save(payload, path.with_suffix(".state.pt"))
        return path

    def resume(self, path: str | os.PathLike) -> None:
        """Continue a saved run: last weights, optimiser, step and histories from ``path``'s state file."""
        from ..models.checkpoint import read_checkpoint

        path = Path(path)
        state_path = path.with_suffix(".state.pt")
        if not state_path.is_file():
            raise CheckpointError(f"There is no saved training state next to {path.name} ({state_path.name}); "
                                  "fine-tune from the model instead.")
        try:
            payload = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt or foreign file: say so in one sentence
            raise CheckpointError(f"{state_path.name} could not be read as a training state: {plain_text(err, 200)}") from err
        if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{state_path.name} is not a napari-virtual-stain training state.")
        card, best = read_checkpoint(path)
        model_run, state_run = card.training.get("run_id"), payload.get("run_id")
        if model_run != state_run:
            raise CheckpointError(f"{state_path.name} belongs to another training run than {path.name} (the model was "
                                  "replaced or the state copied from elsewhere): fine-tune from the model instead.")
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.critic is not None and payload.get("critic") is not None:
                self.critic.load_state_dict(payload["critic"])
                self.critic_optimizer.load_state_dict(payload["critic_optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"The saved training state does not fit this model: {plain_text(err, 200)}") from err
        self.step = int(payload["step"])
        self.skipped_steps = int(payload.get("skipped_steps", 0))
        self.seconds_before = float(payload["seconds"])
        self.stopper.load_state_dict(payload["early_stopping"])
        self.history = {k: [tuple(p) for p in v] for k, v in payload["history"].items()}
        self.train_data.set_state(payload["data_state"])
        self._validated_once = bool(payload.get("validated", False))
        self.run_id = state_run or self.run_id
        self.best_state = best
        self.best_scores = dict(card.scores.get("validation", {}))
