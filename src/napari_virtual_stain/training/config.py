"""How to train, and what a run reports: the settings (``TrainConfig``, checked in one place
for the dock, the command line and scripts), the update after each step and the result."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..models.card import ModelCard
from . import adversarial
from .losses import LOSS_NAMES
from .schedules import LR_SCHEDULES

# Used when neither steps, epochs nor minutes are given.
DEFAULT_STEPS = 500


@dataclass
class TrainConfig:
    """How to train. Lengths: ``steps``, else ``epochs`` (nominal epochs of the training
    region), and/or ``max_minutes`` (whichever ends first); none of them: DEFAULT_STEPS.

    ``lr`` None means 2e-4 with Adam (pix2pix, papers 001/004) or 5e-5 with RMSprop for
    WGAN-GP (paper 002). ``gan_weight``/``n_critic`` None take the per-kind defaults of
    ``adversarial``. ``patience`` counts validations. ``precision`` "fp32" is exact;
    "bf16"/"auto" use autocast (see engine.device).
    """

    patch: Sequence[int] = (128, 128)
    batch_size: int = 8
    steps: int | None = None
    epochs: int | None = None
    max_minutes: float | None = None
    lr: float | None = None
    loss: str = "l1"
    alpha: float = 0.5
    gan: str | None = None
    gan_weight: float | None = None
    n_critic: int | None = None
    lambda_gp: float = 10.0
    critic_width: int = 32
    # "patchgan" (pix2pix) or "multiscale" (pix2pixHD: PatchGANs at several scales plus a
    # feature-matching loss; vanilla or lsgan only).
    critic: str = "patchgan"
    lr_schedule: str = "constant"
    decay_start: float = 0.5
    patience: int | None = None
    val_fraction: float = 0.15
    val_every: int = 50
    max_val_tiles: int = 32
    preview_every: int = 25
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    best_path: str | None = None
    last_path: str | None = None
    checkpoint_every: int | None = None

    def check(self, spatial_dims: int) -> None:
        """Raise InputError for settings that cannot work."""
        if len(tuple(self.patch)) != spatial_dims:
            raise InputError(f"The patch {tuple(self.patch)} needs {spatial_dims} sizes for a {spatial_dims}D model.")
        if self.loss not in LOSS_NAMES:
            raise InputError(f"Unknown loss {self.loss!r}; choose one of {', '.join(LOSS_NAMES)}.")
        if self.gan is not None and self.gan not in adversarial.GAN_KINDS:
            raise InputError(f"Unknown adversarial training {self.gan!r}; choose one of {', '.join(adversarial.GAN_KINDS)}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"Unknown learning-rate schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}.")
        if self.critic not in ("patchgan", "multiscale"):
            raise InputError(f"Unknown critic {self.critic!r}; choose 'patchgan' or 'multiscale'.")
        if self.critic == "multiscale" and self.gan == "wgan-gp":
            raise InputError("The multi-scale critic (pix2pixHD) trains with 'vanilla' or 'lsgan', not 'wgan-gp'.")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"The loss weight alpha must be between 0 and 1, not {self.alpha}.")
        for name in ("batch_size", "steps", "epochs", "val_every", "preview_every", "n_critic", "patience", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"{name.replace('_', ' ').capitalize()} must be at least 1, not {value}.")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise InputError(f"The time limit must be positive, not {self.max_minutes} minutes.")
        if self.lr is not None and not (math.isfinite(self.lr) and 0 <= self.lr < 1):  # 0: frozen weights
            raise InputError(f"The learning rate must be 0 or more and below 1 (typically 1e-4 to 1e-3), not {self.lr}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"The validation fraction must be at least 0 and below 1, not {self.val_fraction}.")
        for name in ("gan_weight", "lambda_gp"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name.replace('_', ' ').capitalize()} must be 0 or more, not {value}.")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch"] = [int(p) for p in self.patch]
        return data


@dataclass
class TrainUpdate:
    """What a live view needs after each step."""

    step: int
    total_steps: int | None
    train_loss: float  # nan when the step was skipped
    val_loss: float | None = None  # the latest validation loss (None before the first)
    val_step: int | None = None  # the step it was measured at
    best_val_loss: float | None = None
    sec_per_step: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    lr: float = 0.0
    critic_loss: float | None = None
    gen_adv_loss: float | None = None
    wasserstein: float | None = None  # WGAN-GP: mean D(real) - D(fake), the critic's distance estimate
    gradient_penalty: float | None = None
    preview: np.ndarray | None = None  # (T, ...) prediction on a fixed validation patch, in [0, 1]
    scores: dict | None = None  # validation scores per channel, when validated at this step
    skipped: bool = False  # the loss or gradients were not finite: no weight update this step


@dataclass
class TrainResult:
    stopped: bool  # True when the user stopped the run
    reason: str  # "steps", "minutes", "early_stopping", "stopped" or a callback's request_stop reason
    steps: int
    best_step: int
    best_val_loss: float | None
    seconds: float
    scores: dict = field(default_factory=dict)  # validation scores of the best model
    history: dict = field(default_factory=dict)  # {"train": [[step, loss]], "val": [[step, loss]]}
    card: ModelCard | None = None
