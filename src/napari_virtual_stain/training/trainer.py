"""The training loop: generic over any generator (and optional critic) ``nn.Module``.

``Trainer(model, card, inputs, targets, config).run(progress, cancel, on_update)`` trains on
patches of co-registered pairs (``datasets.PairedPatches``) with a masked reconstruction
loss (``losses``), optionally adversarially (``adversarial``: pix2pix's vanilla or
least-squares GAN with Adam, or paper 002's WGAN-GP with RMSprop and n_critic critic
steps per generator step). It validates on a held-out region every ``val_every`` steps
(and once before the first step, so a fine-tuned model is only replaced by a better
one), keeps the best weights, stops early after ``patience`` validations without
improvement (paper 003), and decays the learning rate linearly in the second part of the
run if asked (papers 001, 004).

Stop is a normal end: when the cancel event is set the loop ends after the current step,
the best weights are put back into the model and ``run`` returns
``TrainResult(stopped=True)``. ``save(path)`` / ``resume(path)`` (``run_files``) write and
read the best model and the resume state; ``TrainConfig`` and the records are in ``config``.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.device import autocast_context, resolve_device, resolve_precision
from ..errors import InputError
from ..metrics import tiled_channel_scores
from ..models.card import ModelCard
from ..models.pix2pixhd import MultiscaleDiscriminator
from . import adversarial
from .config import DEFAULT_STEPS, TrainConfig, TrainResult, TrainUpdate
from ..models.zwindow import z_window
from .datasets import PairedPatches
from .losses import make_loss
from .pix2pixhd_loss import make_multiscale_critic, multiscale_gan_step
from .run_files import TrainerFiles, cpu_state
from .schedules import EarlyStopping, lr_factor

# A step whose loss or gradients are not finite is skipped (no weight update), as a
# gradient scaler does: a rare overflow (seen with bf16 autocast in 3D) must not poison
# the weights. This many such steps in a row mean the run has diverged.
MAX_BAD_STEPS_IN_A_ROW = 5


def training_precision(device: torch.device, requested: str, spatial_dims: int) -> str:
    """The precision to train in: as ``engine.device.resolve_precision``, except that "auto"
    stays fp32 for 3D networks on the CPU. There, bf16 autocast gave occasional garbage
    weight gradients (|g| ~ 1e29, then inf) in a 3D U-Net's bottleneck with torch 2.13's
    CPU kernels, which ended the first demo-model run; 2D bf16 training was fine (and 2.3x
    faster per step than fp32 on this CPU).
    """
    if requested == "auto" and device.type == "cpu" and spatial_dims == 3:
        return "fp32"
    return resolve_precision(device, requested)


def _to_unit(pred: torch.Tensor, activation: str) -> torch.Tensor:
    # Targets are in [0, 1]; a tanh network's [-1, 1] is mapped there (as the Predictor does).
    return (pred + 1.0) * 0.5 if activation == "tanh" else pred


class Trainer(TrainerFiles):
    """Train ``model`` (described by ``card``) on (input, target) pairs; see the module docstring.

    ``inputs``: list of (C, Y, X) or (C, Z, Y, X) arrays; ``targets``: per pair a (T, ...)
    array or a list of T arrays/None (NaN = missing pixel). ``critic``: a conditional
    critic taking C + T channels; built automatically (``adversarial.make_critic``) when
    ``config.gan`` is set and none is given.
    """

    def __init__(self, model: nn.Module, card: ModelCard, inputs: Sequence, targets: Sequence,
                 config: TrainConfig | None = None, critic: nn.Module | None = None):
        self.config = config = config or TrainConfig()
        config.check(card.spatial_dims)
        self.card = card
        dims = card.spatial_dims
        n_in = int(inputs[0].shape[0]) if len(inputs) else 0
        if len(inputs) and n_in != card.n_in:
            raise InputError(f"The model '{card.name}' expects {card.n_in} input channel(s) "
                             f"({', '.join(card.input_channels)}) but the chosen input has {n_in}.")
        common = dict(patch=config.patch, spatial_dims=dims, val_fraction=config.val_fraction, seed=config.seed,
                      input_normalisation=card.input_normalisation, input_names=None,
                      target_names=card.output_channels, z_window=z_window(card))
        self.train_data = PairedPatches(inputs, targets, augment=config.augment, split="train", **common)
        if self.train_data.n_out != card.n_out:
            raise InputError(f"The model '{card.name}' predicts {card.n_out} channel(s) "
                             f"({', '.join(card.output_channels)}) but {self.train_data.n_out} target channel(s) were chosen.")
        self.val_data = (PairedPatches(inputs, targets, augment=False, split="val", max_val_tiles=config.max_val_tiles, **common)
                         if config.val_fraction > 0 else None)

        torch.manual_seed(config.seed)
        self.device = resolve_device(config.device)
        self.precision = training_precision(self.device, config.precision, dims)
        self.model = model.to(self.device)
        self.loss_fn = make_loss(config.loss, config.alpha)
        self.gan = config.gan
        if self.gan:
            if critic is None and config.critic == "multiscale":
                critic = make_multiscale_critic(self.train_data.n_in, card.n_out, tuple(config.patch), ndf=config.critic_width)
            self.critic = (critic if critic is not None else adversarial.make_critic(
                self.train_data.n_in, card.n_out, dims, tuple(config.patch), self.gan, ndf=config.critic_width)).to(self.device)
            self.gan_weight = config.gan_weight if config.gan_weight is not None else adversarial.DEFAULT_GAN_WEIGHT[self.gan]
            self.n_critic = config.n_critic or adversarial.DEFAULT_N_CRITIC[self.gan]
        else:
            self.critic = None
        self.base_lr = config.lr if config.lr is not None else (5e-5 if self.gan == "wgan-gp" else 2e-4)
        self.optimizer = self._optimizer(self.model)
        self.critic_optimizer = self._optimizer(self.critic) if self.critic is not None else None

        self.steps_per_epoch = max(1, math.ceil(len(self.train_data) / config.batch_size))
        if config.steps is not None:
            self.total_steps: int | None = int(config.steps)
        elif config.epochs is not None:
            self.total_steps = int(config.epochs) * self.steps_per_epoch
        elif config.max_minutes is not None:
            self.total_steps = None
        else:
            self.total_steps = DEFAULT_STEPS

        self.step = 0
        self.skipped_steps = 0  # steps without a weight update (non-finite loss or gradients)
        self.seconds_before = 0.0  # training time of earlier (resumed) runs
        self.stopper = EarlyStopping(config.patience)
        self.history: dict[str, list] = {"train": [], "val": []}
        self.best_state = cpu_state(self.model)
        self.last_state: dict | None = None
        self.best_scores: dict = {}
        self.reason = "not started"
        self._validated_once = False
        # Ties a resume state to the model file of the same run (both carry it), so --resume
        # never continues another run's optimiser and history on this model.
        self.run_id = uuid.uuid4().hex

    # ---- setup ---------------------------------------------------------------------------

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        if self.gan == "wgan-gp":
            return torch.optim.RMSprop(module.parameters(), lr=self.base_lr)
        betas = (0.5, 0.999) if self.gan else (0.9, 0.999)
        return torch.optim.Adam(module.parameters(), lr=self.base_lr, betas=betas)

    def _set_lr(self, progress: float) -> float:
        lr = self.base_lr * lr_factor(self.config.lr_schedule, progress, self.config.decay_start)
        for opt in (self.optimizer, self.critic_optimizer):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr
        return lr

    # ---- extension points: what step strategies (GAN, pix2pixHD, masked imputation) build on ----

    def next_batch(self):
        """``(x, y, mask)`` on the device: one training batch (override to change what a step sees)."""
        return tuple(t.to(self.device) for t in self.train_data.sample_batch(self.config.batch_size))

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's prediction in [0, 1] under the run's precision policy."""
        with autocast_context(self.device, self.precision):
            pred = self.model(x)
        return _to_unit(pred.float(), self.card.output_activation)

    def _critic(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.precision):
            scores = self.critic(torch.cat([x, y], dim=1))
        return scores.float()

    # ---- one step --------------------------------------------------------------------------

    def _train_step(self) -> dict[str, float]:
        self.model.train()
        if not self.gan:
            x, y, mask = self.next_batch()
            loss = self.loss_fn(self.generate(x), y, mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            applied = self.apply_step(self.optimizer, self.model, loss)
            return {"train_loss": float(loss.detach()), "skipped": not applied}
        return self._gan_step()

    @staticmethod
    def apply_step(optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor) -> bool:
        """Take the optimiser step only when the loss and every gradient are finite (every step
        strategy goes through here: a non-finite step is skipped and counted, never applied)."""
        finite = bool(torch.isfinite(loss.detach()))
        if finite:
            finite = all(bool(torch.isfinite(p.grad).all()) for p in module.parameters() if p.grad is not None)
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
        return finite

    def _gan_step(self) -> dict[str, float]:
        if isinstance(self.critic, MultiscaleDiscriminator):  # pix2pixHD: all scales + feature matching
            return multiscale_gan_step(self)
        kind = self.gan
        self.critic.train()
        self.critic.requires_grad_(True)
        out: dict[str, float] = {}
        for _ in range(self.n_critic):
            x, y, mask = self.next_batch()  # a fresh batch per critic step (paper 002, algorithm 1)
            with torch.no_grad():
                fake = adversarial.mask_for_critic(self.generate(x), mask)
            real = adversarial.mask_for_critic(y, mask)
            real_scores, fake_scores = self._critic(x, real), self._critic(x, fake)
            loss = adversarial.critic_loss(kind, real_scores, fake_scores)
            if kind == "wgan-gp":
                penalty = adversarial.gradient_penalty(self.critic, x, real, fake)
                out["wasserstein"] = float((real_scores.mean() - fake_scores.mean()).detach())
                out["gradient_penalty"] = float(penalty.detach())
                loss = loss + self.config.lambda_gp * penalty
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.apply_step(self.critic_optimizer, self.critic, loss)
            out["critic_loss"] = float(loss.detach())
        # Generator step on the last batch; the critic's weights are not trained here.
        self.critic.requires_grad_(False)
        pred = self.generate(x)
        recon = self.loss_fn(pred, y, mask)
        adv = adversarial.generator_adversarial_loss(kind, self._critic(x, adversarial.mask_for_critic(pred, mask)))
        loss = recon + self.gan_weight * adv
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out["skipped"] = not self.apply_step(self.optimizer, self.model, loss)
        self.critic.requires_grad_(True)
        out["train_loss"] = float(recon.detach())
        out["gen_adv_loss"] = float(adv.detach())
        return out

    # ---- validation --------------------------------------------------------------------------

    @torch.no_grad()
    def predict_patches(self, x: torch.Tensor) -> torch.Tensor:
        """The model's prediction in [0, 1] for a batch of normalised patches (eval mode)."""
        self.model.eval()
        return self.generate(x.to(self.device))

    def validate(self) -> tuple[float, dict]:
        """Validation loss (the reconstruction loss over all validation tiles) and scores.

        Tiles of one shape are batched together (the band may give smaller tiles than the
        patch); the loss is the mean of the batches' losses weighted by their valid pixels.
        """
        data = self.val_data
        preds, ys, masks, losses, weights = [], [], [], [], []
        batch: list = []

        def flush():
            x, y, mask = (torch.stack(parts) for parts in zip(*batch))
            pred = self.predict_patches(x).cpu()
            losses.append(float(self.loss_fn(pred, y, mask)))
            weights.append(float(mask.sum()))
            preds.extend(pred.numpy())
            ys.extend(y.numpy())
            masks.extend(mask.numpy() > 0)
            batch.clear()

        for i in range(len(data)):
            item = data[i]
            if batch and (len(batch) == self.config.batch_size or item[0].shape != batch[0][0].shape):
                flush()
            batch.append(item)
        if batch:
            flush()
        loss = float(np.average(losses, weights=weights)) if sum(weights) > 0 else 0.0
        scores = tiled_channel_scores(preds, ys, masks, names=self.card.output_channels)
        return loss, scores

    def preview(self) -> np.ndarray:
        """Prediction (T, ...) on the fixed preview patch (the first validation tile)."""
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        x, _, _ = data.fixed_patch()
        return self.predict_patches(x[None])[0].cpu().numpy()

    def _on_validation(self, loss: float, scores: dict) -> bool:
        """Record a validation; keep the weights if they are the best. Returns should_stop."""
        self.history["val"].append((self.step, loss))
        improved, stop = self.stopper.update(loss, self.step)
        if improved:
            self.best_state = cpu_state(self.model)
            self.best_scores = scores
            # Not before the first trained step: the file at best_path (a model the user had, with
            # --overwrite) is kept until this run has trained weights to put in its place.
            if self.config.best_path and self.step > 0:
                self._save_model(Path(self.config.best_path), self.best_state)
        return stop

    # ---- the loop --------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
            on_update: Callable[[TrainUpdate], None] | None = None) -> TrainResult:
        """Train until the planned steps/minutes, early stopping or Stop; see the module docstring."""
        config = self.config
        start = time.perf_counter()
        max_seconds = config.max_minutes * 60.0 if config.max_minutes is not None else None
        first_step = self.step
        val_loss, val_step, scores = None, None, None
        if self.history["val"]:
            val_step, val_loss = self.history["val"][-1]

        if self.val_data is not None and not self._validated_once and self.step == 0:
            val_loss, scores = self.validate()
            val_step = 0
            self._validated_once = True
            self._on_validation(val_loss, scores)

        self.reason = "steps"
        bad_in_a_row = 0
        while True:
            elapsed = time.perf_counter() - start
            if cancel is not None and cancel.is_set():
                self.reason = "stopped"
                break
            if self.total_steps is not None and self.step >= self.total_steps:
                self.reason = "steps"
                break
            if max_seconds is not None and elapsed >= max_seconds:
                self.reason = "minutes"
                break
            fraction = self._progress_fraction(elapsed, max_seconds)
            lr = self._set_lr(fraction)
            losses = self._train_step()
            if losses.get("skipped"):
                self.skipped_steps += 1
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
                    raise InputError(f"Training diverged at step {self.step + 1}: the loss or its gradients were not finite "
                                     f"{bad_in_a_row} steps in a row; lower the learning rate, use fp32 or check the data.")
            else:
                bad_in_a_row = 0
            self.step += 1
            if math.isfinite(losses["train_loss"]):
                self.history["train"].append((self.step, losses["train_loss"]))

            scores = None
            should_stop = False
            if self.val_data is not None and self.step % config.val_every == 0:
                val_loss, scores = self.validate()
                val_step = self.step
                should_stop = self._on_validation(val_loss, scores)
            if config.checkpoint_every and config.last_path and self.step % config.checkpoint_every == 0:
                self.save(config.last_path, best=False)

            elapsed = time.perf_counter() - start
            per_step = elapsed / max(1, self.step - first_step)
            eta = self._eta(per_step, elapsed, max_seconds)
            if progress is not None:
                done_fraction = self._progress_fraction(elapsed, max_seconds)
                if self.total_steps is not None and max_seconds is None:
                    progress(self.step, self.total_steps)
                else:
                    progress(int(round(1000 * done_fraction)), 1000)
            if on_update is not None:
                preview = self.preview() if self.step % config.preview_every == 0 else None
                on_update(TrainUpdate(
                    step=self.step, total_steps=self.total_steps, train_loss=losses["train_loss"],
                    val_loss=val_loss, val_step=val_step,
                    best_val_loss=self.stopper.best if math.isfinite(self.stopper.best) else None,
                    sec_per_step=per_step, eta_s=eta, elapsed_s=elapsed, lr=lr,
                    critic_loss=losses.get("critic_loss"), gen_adv_loss=losses.get("gen_adv_loss"),
                    wasserstein=losses.get("wasserstein"), gradient_penalty=losses.get("gradient_penalty"),
                    preview=preview, scores=scores, skipped=bool(losses.get("skipped", False))))
            if should_stop:
                self.reason = "early_stopping"
                break

        # A final validation unless the user asked to stop (Stop must be prompt) or the
        # last step was just validated.
        if (self.reason != "stopped" and self.val_data is not None and self.history["val"]
                and self.history["val"][-1][0] != self.step):
            val_loss, scores = self.validate()
            self._on_validation(val_loss, scores)
        self.seconds_before += time.perf_counter() - start
        self.last_state = cpu_state(self.model)
        if self.val_data is None:
            self.best_state = self.last_state  # nothing to choose by: the last weights are the result
            self.stopper.best_step = self.step
        self.model.load_state_dict(self.best_state)
        self.model.eval()
        if config.last_path:
            self.save(config.last_path, best=False)
        best_loss = self.stopper.best if math.isfinite(self.stopper.best) else None
        return TrainResult(stopped=self.reason == "stopped", reason=self.reason, steps=self.step,
                           best_step=self.stopper.best_step, best_val_loss=best_loss, seconds=self.seconds_before,
                           scores=self.best_scores, history=copy.deepcopy(self.history), card=self.trained_card())

    def _progress_fraction(self, elapsed: float, max_seconds: float | None) -> float:
        fractions = []
        if self.total_steps:
            fractions.append(self.step / self.total_steps)
        if max_seconds:
            fractions.append(elapsed / max_seconds)
        return min(1.0, max(fractions)) if fractions else 0.0

    def _eta(self, per_step: float, elapsed: float, max_seconds: float | None) -> float | None:
        options = []
        if self.total_steps is not None:
            options.append(max(0, self.total_steps - self.step) * per_step)
        if max_seconds is not None:
            options.append(max(0.0, max_seconds - elapsed))
        return min(options) if options else None
