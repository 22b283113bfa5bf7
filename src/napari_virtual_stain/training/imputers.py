"""Train one MAXIM imputer per target marker from a multiplex stack with good stains.

"Train imputers for all markers" is one call: for each chosen target marker a U-Net
takes all other markers of the stack as input (paper 003: 4 levels, 32 to 256 features,
sigmoid output, L1 + L2 loss with weight alpha, Adam at 0.002, early stopping; the
adversarial variant with pix2pix's PatchGAN as an option) and is trained with the
project's :class:`~napari_virtual_stain.training.trainer.Trainer`. Each marker gets its
own checkpoint and model card in the output folder.

What this adds to the generic trainer:

- **input-marker dropout**: during training each input marker of each sample is zeroed
  with probability ``input_dropout`` (never all of them). A failed stain fed as zeros
  then looks like something the network has seen, which the QC relies on when it judges
  the other markers with a failed one left out (``tasks.maxim_qc``);
- **held-out scores as in the paper**: after training, the imputer, BL-Zero and BL-Mean
  are scored on the held-out region (the last ``val_fraction`` of the image height) with
  the same functions the QC uses; the card keeps them (``scores["val"]``,
  ``scores["bl_zero"]``, ``scores["bl_mean"]``, and ``scores["val_without"][input]`` with
  each input marker zeroed in turn) so the QC knows what a good stain scores;
- **the brightness reference**: raw 1st/99.8th percentiles of every marker of the training
  stack (``extra["marker_stats"]``) and its dtype, for the QC's brightness check.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import metrics
from ..errors import Cancelled, InputError
from ..models.card import ModelCard
from ..models.checkpoint import save_checkpoint
from ..models.factory import build_model
from ..tasks.maxim import (bl_mean, channel_index, check_marker_stack, impute_marker, normalise_marker, raw_range,
                           select_markers, stack_marker_stats)
from ..tasks.maxim_qc import local_error_level
from ..tasks.region import Region
from .datasets import DEFAULT_INPUT_NORMALISATION, split_regions
from .config import TrainConfig
from .trainer import Trainer


@dataclass
class ImputerConfig:
    """Settings for every imputer of one run. Lengths are per marker: ``steps`` and/or
    ``max_minutes`` (whichever ends first)."""

    steps: int | None = 2000
    max_minutes: float | None = None
    patch: int = 128
    batch_size: int = 8
    lr: float = 2e-3  # paper 003
    alpha: float = 0.5  # L1 weight in alpha * L1 + (1 - alpha) * L2 (paper 003)
    adversarial: bool = False  # MAXIM-Adv: pix2pix's conditional PatchGAN, BCE
    depth: int = 3  # 3 poolings -> 4 levels of 32, 64, 128, 256 features
    base: int = 32
    max_width: int = 256
    norm: str = "batch"
    input_dropout: float = 0.2
    val_fraction: float = 0.15
    val_every: int = 50
    patience: int | None = 25  # validations without improvement (paper 003: 25 epochs)
    device: str = "auto"
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(patch=(self.patch, self.patch), batch_size=self.batch_size, steps=self.steps,
                           max_minutes=self.max_minutes, lr=self.lr, loss="l1_l2", alpha=self.alpha,
                           gan="vanilla" if self.adversarial else None, patience=self.patience,
                           val_fraction=self.val_fraction, val_every=self.val_every, seed=self.seed,
                           device=self.device, preview_every=10**9)


class _DropoutTrainer(Trainer):
    """The generic trainer with whole input markers zeroed at random in training batches."""

    input_dropout = 0.0

    def next_batch(self):
        x, y, mask = super().next_batch()
        p = self.input_dropout
        if p > 0 and x.shape[1] > 1:
            keep = torch.rand(x.shape[:2], device=x.device) >= p
            # never drop every marker of a sample: keep one at random where that happened
            empty = ~keep.any(dim=1)
            if empty.any():
                rescue = torch.randint(0, x.shape[1], (int(empty.sum()),), device=x.device)
                keep[empty.nonzero()[:, 0], rescue] = True
            x = x * keep[:, :, None, None].to(x.dtype)
        return x, y, mask


@dataclass
class ImputerResult:
    marker: str
    path: Path | None
    card: ModelCard
    scores: dict  # {"val": {...}, "bl_zero": {...}, "bl_mean": {...}} on the held-out region
    steps: int
    seconds: float


@dataclass
class ImputerRun:
    results: dict[str, ImputerResult] = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, Path]:
        return {m: r.path for m, r in self.results.items() if r.path is not None}


def imputer_card(target: str, inputs: Sequence[str], config: ImputerConfig, stack, names) -> ModelCard:
    """The card of an untrained imputer for ``target`` from ``inputs``."""
    args = {"in_channels": len(inputs), "out_channels": 1, "spatial_dims": 2, "depth": config.depth,
            "base": config.base, "max_width": config.max_width, "norm": config.norm, "activation": "sigmoid"}
    tile = max(config.patch, 2 ** config.depth * 16)
    return ModelCard(
        name=f"maxim-{target}", task="impute", architecture="unet", arch_args=args, spatial_dims=2,
        input_channels=list(inputs), output_channels=[target], input_normalisation=dict(DEFAULT_INPUT_NORMALISATION),
        output_activation="sigmoid", tile=[tile, tile], overlap=[tile // 8, tile // 8],
        description=f"MAXIM imputer (paper 003): {target} from {', '.join(inputs)}.",
        extra={"markers": list(names), "marker_stats": stack_marker_stats(stack, names),
               "dtype": str(np.asarray(stack[:, :1, :1]).dtype), "input_dropout": config.input_dropout,
               "adversarial": config.adversarial})


def heldout_scores(model, card: ModelCard, stack, names: Sequence[str], region: Region,
                   device: str = "auto", cancel=None) -> dict[str, dict[str, float]]:
    """Imputer, BL-Zero and BL-Mean scored against the acquired target on ``region``."""
    crop = np.asarray(stack[(slice(None),) + region.slices])
    target = card.output_channels[0]
    acquired = normalise_marker(crop[channel_index(names, target)])
    imputed = impute_marker(model, card, crop, names, device=device, cancel=cancel).data
    mean = bl_mean(crop, names, card)

    def score(pred, local=True):
        out = {"ssim": metrics.ssim(pred, acquired), "pcc": metrics.pcc(pred, acquired),
               "mae": metrics.mae(pred, acquired)}
        if local:  # how far good data disagrees locally: the QC's region threshold builds on it
            out["local_error_p999"] = local_error_level(acquired, pred)
        return out

    zero = score(np.zeros_like(acquired), local=False)
    zero.pop("pcc")
    # What the QC should expect when one input marker has failed and is fed as zeros.
    without = {m: score(impute_marker(model, card, crop, names, missing=[m], device=device, cancel=cancel).data)
               for m in card.input_channels}
    return {"val": score(imputed), "bl_zero": zero, "bl_mean": score(mean, local=False), "val_without": without}


def imputer_file_name(marker: str) -> str:
    return "imputer-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", marker).strip("_") or "marker") + ".pt"


def check_trainable(stack, names: Sequence[str], targets: Sequence[str]) -> None:
    """Refuse targets without signal: a constant marker cannot be learned."""
    for target in targets:
        low, high = raw_range(stack[channel_index(names, target)])
        if high <= low:
            raise InputError(f"The marker {target} is constant ({low:g}) in this stack: there is nothing to learn; "
                             "leave it out of the markers to train.")


def train_imputers(stack, names: Sequence[str], out_dir: str | os.PathLike | None, *,
                   markers: Sequence[str] | None = None, config: ImputerConfig | None = None,
                   progress: Callable[[int, int], None] | None = None, cancel=None,
                   on_marker: Callable[[ImputerResult], None] | None = None) -> ImputerRun:
    """Train one imputer per marker in ``markers`` (default: all) from a (C, Y, X) ``stack``.

    Writes ``imputer-<marker>.pt`` per marker into ``out_dir`` (None: keep them in memory
    only) as soon as it is trained. Progress runs over all markers (0..1000 per marker).
    A set ``cancel`` event stops after the current step; markers finished before stay
    written, the interrupted one is not, and :class:`Cancelled` is raised.
    """
    config = config or ImputerConfig()
    names = check_marker_stack(stack, names)
    targets = select_markers(markers, names, "markers to train")
    check_trainable(stack, names, targets)
    stack = np.asarray(stack)
    spatial = stack.shape[1:]
    _, val_slices = split_regions(spatial, (config.patch, config.patch), config.val_fraction, "the stack")
    if val_slices is None:
        raise InputError("Imputers need a held-out region to be scored on; use a validation fraction above 0.")
    val_region = Region(tuple(s.start for s in val_slices), tuple(s.stop for s in val_slices))
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    run = ImputerRun()
    for k, target in enumerate(targets):
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled by the user")
        t = channel_index(names, target)
        inputs = [n for i, n in enumerate(names) if i != t]
        card = imputer_card(target, inputs, config, stack, names)
        torch.manual_seed(config.seed + k)
        model = build_model(card.architecture, card.arch_args)
        x = np.delete(stack, t, axis=0)
        trainer = _DropoutTrainer(model, card, [x], [stack[t][None]], config.train_config())
        trainer.input_dropout = config.input_dropout

        def step_progress(done, total, k=k):
            if progress is not None:
                progress(k * 1000 + int(1000 * done / max(total, 1)), len(targets) * 1000)

        result = trainer.run(progress=step_progress, cancel=cancel)
        if result.stopped:
            raise Cancelled("cancelled by the user")
        trained = result.card
        model = trainer.model.cpu().eval()
        scores = heldout_scores(model, trained, stack, names, val_region, device=config.device, cancel=cancel)
        trained.scores = dict(trained.scores, **scores, heldout_region={"start": list(val_region.start),
                                                                          "stop": list(val_region.stop)})
        path = save_checkpoint(out_path / imputer_file_name(target), model, trained) if out_path is not None else None
        item = ImputerResult(target, path, trained, scores, result.steps, result.seconds)
        run.results[target] = item
        if on_marker is not None:
            on_marker(item)
        if progress is not None:
            progress((k + 1) * 1000, len(targets) * 1000)
    return run


def margin_summary(scores: dict) -> dict[str, float]:
    """Margins of the imputer over the baselines on held-out data (positive = better)."""
    val, zero, mean = scores["val"], scores["bl_zero"], scores["bl_mean"]
    out = {"ssim_vs_bl_zero": val["ssim"] - zero["ssim"], "ssim_vs_bl_mean": val["ssim"] - mean["ssim"],
           "mae_vs_bl_zero": zero["mae"] - val["mae"], "mae_vs_bl_mean": mean["mae"] - val["mae"]}
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}
