"""One MAXIM imputer for every marker of a panel, trained with random channel masking.

Instead of one U-Net per target marker (seven networks that a CPU trains for half a minute
each), one U-Net sees every marker at once and learns to fill in whichever are hidden, as
masked autoencoders do: in each training sample a random share of the markers
(``mask_share``) is zeroed and flagged in a mask plane, and the loss (L1) is taken on the
hidden markers only. Input: the C markers (each in the comparison unit of ``tasks.maxim``,
own 1st/99.8th percentiles -> [0, 1]) with hidden ones zeroed, then C mask planes (1 =
hidden); output: the C markers, sigmoid.

Held out by region: the last ``val_fraction`` of the image height is never trained on. There
each marker is imputed with only itself hidden, and scored (MAE, PCC, SSIM, and the local
error level the QC's region threshold builds on) next to paper 003's BL-Mean baseline (the
mean of the other markers). A marker's imputation check counts in the QC only where the
imputer beats that baseline clearly (``min_gain`` lower MAE and ``min_pcc``); the others are
judged by the training-free checks alone. The card stores all of it per marker
(``scores["per_marker"]``), and the training stack's per-marker signal share and range
(``extra``), the reference the QC uses to call a marker missing.

It trains through the project's ``Trainer`` like every other model: the batches are
``batch_sources.StackPatches`` of the training rows and the step is the public
``strategies.MaskedImputation``, so it shares the non-finite guard, the precision policy
and the callbacks; the checkpoint is written atomically (``models.checkpoint``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import metrics
from ..errors import Cancelled, InputError
from ..models.card import ModelCard
from ..models.checkpoint import save_checkpoint
from ..models.factory import build_model
from ..tasks.maxim import check_marker_stack, normalise_marker, stack_marker_stats
from ..tasks.maxim_joint import JOINT_FILE, joint_forward, signal_fractions
from ..tasks.maxim_qc import local_error_level
from .batch_sources import StackPatches
from .config import TrainConfig
from .strategies import MaskedImputation, random_masks
from .trainer import Trainer

__all__ = ["JointImputerConfig", "JointImputerResult", "informative_markers", "joint_card", "random_masks",
           "score_per_marker", "train_joint_imputer"]


@dataclass
class JointImputerConfig:
    minutes: float | None = 4.0
    steps: int | None = None  # whichever of minutes / steps ends first (None: no limit from it)
    patch: int = 96
    batch_size: int = 8
    lr: float = 2e-3  # paper 003
    depth: int = 3
    base: int = 16  # a CPU trains a narrower network many more steps in the same minutes
    max_width: int = 128
    mask_share: tuple[float, float] = (0.15, 0.5)  # share of the markers hidden per sample, drawn uniformly
    val_fraction: float = 0.2
    min_gain: float = 0.1  # imputer MAE at most (1 - min_gain) x BL-Mean's to count
    min_pcc: float = 0.3
    device: str = "auto"
    precision: str = "fp32"  # the Trainer's policy: "auto" trains in bf16 where that is fast
    seed: int = 0

    def train_config(self, patch: int) -> TrainConfig:
        """The Trainer's settings for a run on ``patch``-pixel crops (no validation split: the
        held-out rows are scored per marker afterwards)."""
        return TrainConfig(patch=(patch, patch), batch_size=self.batch_size, steps=self.steps or None,
                           max_minutes=self.minutes or None, lr=self.lr, val_fraction=0.0, augment=False,
                           preview_every=10**9, seed=self.seed, device=self.device, precision=self.precision)


@dataclass
class JointImputerResult:
    path: Path | None
    model: torch.nn.Module
    card: ModelCard
    per_marker: dict  # {marker: {"imputer": {...}, "bl_mean": {...}, "counts": bool}}
    steps: int
    seconds: float


def _normalised(stack: np.ndarray) -> np.ndarray:
    return np.stack([normalise_marker(c) for c in stack]).astype(np.float32)


def informative_markers(stack: np.ndarray) -> np.ndarray:
    """Markers with any spread in the comparison unit (a constant or nearly empty one teaches nothing)."""
    return np.array([float(c.max()) > 0 for c in stack])


def joint_card(names: Sequence[str], config: JointImputerConfig, stack: np.ndarray) -> ModelCard:
    c = len(names)
    args = {"in_channels": 2 * c, "out_channels": c, "spatial_dims": 2, "depth": config.depth, "base": config.base,
            "max_width": config.max_width, "norm": "batch", "activation": "sigmoid"}
    tile = max(config.patch * 2, 2 ** config.depth * 16)
    return ModelCard(
        name="maxim-joint", task="impute", architecture="unet", arch_args=args, spatial_dims=2,
        input_channels=list(names) + [f"{n} (hidden)" for n in names], output_channels=list(names),
        input_normalisation={"kind": "none"}, output_activation="sigmoid", tile=[tile, tile],
        overlap=[tile // 8, tile // 8],
        description=f"MAXIM joint imputer: each of {c} markers from the others (random channel masking).",
        extra={"joint": True, "markers": list(names), "marker_stats": stack_marker_stats(stack, names),
               "signal_fractions": signal_fractions(stack, names), "dtype": str(stack.dtype),
               "mask_share": list(config.mask_share)})


def score_per_marker(model, card: ModelCard, normalised: np.ndarray, rows: slice, config: JointImputerConfig,
                     cancel=None) -> dict:
    """Each marker imputed with only itself hidden on the held-out rows, next to BL-Mean."""
    names = card.output_channels
    part = normalised[:, rows]
    informative = informative_markers(normalised)
    out = {}
    for k, name in enumerate(names):
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled by the user")
        acquired = part[k]
        if not informative[k] or float(acquired.max()) <= 0:
            out[name] = {"counts": False, "why": "no signal in the held-out region"}
            continue
        hidden = ~informative
        hidden[k] = True
        imputed = joint_forward(model, card, part, hidden, config.device, cancel)[k]
        others = [j for j in range(len(names)) if j != k and informative[j]]
        mean = part[others].mean(axis=0) if others else np.zeros_like(acquired)

        def score(pred):
            return {"mae": metrics.mae(pred, acquired), "pcc": metrics.pcc(pred, acquired),
                    "ssim": metrics.ssim(pred, acquired)}

        mine, base = score(imputed), score(mean)
        mine["local_error_p999"] = local_error_level(acquired, imputed)
        pcc = mine["pcc"] if math.isfinite(mine["pcc"]) else 0.0
        base_pcc = base["pcc"] if math.isfinite(base["pcc"]) else 0.0
        counts = bool(mine["mae"] <= (1 - config.min_gain) * base["mae"] and pcc >= config.min_pcc and pcc > base_pcc)
        out[name] = {"imputer": mine, "bl_mean": base, "counts": counts}
    return out


def train_joint_imputer(stack, names: Sequence[str], out_dir: str | os.PathLike | None, *,
                        config: JointImputerConfig | None = None, progress: Callable[[int, int], None] | None = None,
                        cancel=None) -> JointImputerResult:
    """Train the joint imputer on a clean (C, Y, X) ``stack``; write ``DIR/joint-imputer.pt`` (None: keep in memory)."""
    config = config or JointImputerConfig()
    names = check_marker_stack(stack, names)
    stack = np.asarray(stack)
    h, w = stack.shape[1:]
    val_rows = int(round(h * config.val_fraction))
    train_rows = h - val_rows
    patch = int(min(config.patch, train_rows, w) // 2 ** config.depth * 2 ** config.depth)
    if val_rows < 8 or patch < 2 ** config.depth * 2:
        raise InputError(f"The stack is {h}x{w} pixels: too small to train on and keep a held-out region "
                         f"({config.val_fraction:.0%} of its height); use a larger stack.")
    normalised = _normalised(stack)
    informative = informative_markers(normalised[:, :train_rows])
    if informative.sum() < 2:
        raise InputError("Fewer than two markers have any signal in this stack: there is nothing to impute from.")
    card = joint_card(names, config, stack)
    if not config.minutes and not config.steps:
        raise InputError("Give the joint imputer a time budget (minutes) or a number of steps.")
    torch.manual_seed(config.seed)
    model = build_model(card.architecture, card.arch_args)
    rng = np.random.default_rng(config.seed)  # one stream: crops, then masks, step after step
    source = StackPatches(normalised, train_rows, patch, informative, rng=rng)
    trainer = Trainer(model, card, (), (), config.train_config(patch), strategy=MaskedImputation(config.mask_share, rng=rng),
                      batches=source)

    def step_progress(done, total):
        if progress is not None:  # 1000 only once the held-out scores are in
            progress(min(int(1000 * done / max(total, 1)), 999), 1000)

    result = trainer.run(progress=step_progress, cancel=cancel)
    if result.stopped:
        raise Cancelled("cancelled by the user")
    model = trainer.model.eval()
    step, seconds = result.steps, result.seconds
    losses = [loss for _, loss in result.history["train"]]
    per_marker = score_per_marker(model, card, normalised, slice(train_rows, h), config, cancel)
    model = model.cpu()
    card.training = {"steps": step, "seconds": round(seconds, 1), "patch": patch, "batch_size": config.batch_size,
                     "lr": config.lr, "loss": "l1 on hidden markers", "skipped_steps": trainer.skipped_steps,
                     "precision": trainer.precision, "stopped_by": result.reason,
                     "final_loss": float(np.mean(losses[-20:])) if losses else None}
    card.scores = {"per_marker": per_marker, "heldout_region": {"start": [train_rows, 0], "stop": [h, w]},
                   "min_gain": config.min_gain, "min_pcc": config.min_pcc}
    path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(Path(out_dir) / JOINT_FILE, model, card)
    if progress is not None:
        progress(1000, 1000)
    return JointImputerResult(path, model, card, per_marker, step, seconds)
