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

Extension points: where the batches come from is a ``batch_sources.BatchSource`` (by
default the ``PairedPatches`` of ``inputs`` and ``targets``, or given as ``batches=``; override
``next_batch`` to change a batch on its way), what a step does is a
``strategies.StepStrategy`` (picked from the config, or given as ``strategy=``), and what
happens around the steps are ``callbacks.Callback`` objects (built from the config and
``run``'s arguments, plus ``run(callbacks=...)``). Every strategy shares the precision policy
(``precision``), the non-finite guard (``step_guard``) and the atomic files (``run_files``).
The validation half is ``validation.TrainerValidation``.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import uuid
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..engine.device import autocast_context, resolve_device
from ..engine.gpu_turn import device_turn
from ..errors import InputError
from ..models.card import ModelCard
from ..models.zwindow import z_window
from . import adversarial
from .batch_sources import BatchSource
from .callbacks import Callback, StepInfo, default_callbacks
from .config import DEFAULT_STEPS, TrainConfig, TrainResult, TrainUpdate
from .datasets import PairedPatches
from .losses import make_loss
from .pix2pixhd_loss import is_multiscale, make_multiscale_critic
from .precision import SCALER_BACKOFFS, needs_grad_scaling, training_precision
from .run_files import TrainerFiles, cpu_state
from .schedules import EarlyStopping, lr_factor
from .step_guard import MAX_BAD_STEPS_IN_A_ROW, apply_step
from .strategies import StepStrategy, strategy_for
from .validation import TrainerValidation

# Importable from here as they always were (tests and scripts use these names).
__all__ = ["MAX_BAD_STEPS_IN_A_ROW", "SCALER_BACKOFFS", "TrainConfig", "TrainResult", "TrainUpdate", "Trainer",
           "needs_grad_scaling", "training_precision"]


def _to_unit(pred: torch.Tensor, activation: str) -> torch.Tensor:
    # Targets are in [0, 1]; a tanh network's [-1, 1] is mapped there (as the Predictor does).
    return (pred + 1.0) * 0.5 if activation == "tanh" else pred


class Trainer(TrainerValidation, TrainerFiles):
    """Train ``model`` (described by ``card``) on (input, target) pairs; see the module docstring.

    ``inputs``: list of (C, Y, X) or (C, Z, Y, X) arrays; ``targets``: per pair a (T, ...)
    array or a list of T arrays/None (NaN = missing pixel). ``critic``: a conditional
    critic taking C + T channels; built automatically (``adversarial.make_critic``) when
    ``config.gan`` is set and none is given. ``strategy``: what one step does (default: the
    built-in strategy for the config, ``strategies.strategy_for``). ``batches``: a
    ``BatchSource`` to train from instead of ``inputs``/``targets`` (pass ``()`` for both; no
    validation split, so ``config.val_fraction`` must be 0).
    """

    def __init__(self, model: nn.Module, card: ModelCard, inputs: Sequence, targets: Sequence,
                 config: TrainConfig | None = None, critic: nn.Module | None = None,
                 strategy: StepStrategy | None = None, batches: BatchSource | None = None):
        self.config = config = config or TrainConfig()
        config.check(card.spatial_dims)
        self.card = card
        if batches is not None:
            self._use_source(batches, inputs, targets)
        else:
            self._pairs(inputs, targets)
        if self.train_data.n_out != card.n_out:
            raise InputError(f"The model '{card.name}' predicts {card.n_out} channel(s) "
                             f"({', '.join(card.output_channels)}) but {self.train_data.n_out} target channel(s) were chosen.")
        dims = card.spatial_dims

        torch.manual_seed(config.seed)
        self.device = resolve_device(config.device)
        self.precision = training_precision(self.device, config.precision, dims)
        # One scaler per optimiser (``update`` scales, steps and updates one optimiser at a
        # time), made on first use; a test may set ``grad_scaling`` to run this path on the CPU.
        self.grad_scaling = needs_grad_scaling(self.device, self.precision)
        self._scalers: dict[int, torch.amp.GradScaler] = {}
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
        self.strategy = strategy if strategy is not None else strategy_for(self.gan, self.critic)

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
        self._stop_reason: str | None = None  # set by request_stop (a callback ending the run)
        self._generator_updates: list[bool] = []  # the guard's verdicts on this step's generator updates
        # Ties a resume state to the model file of the same run (both carry it), so --resume
        # never continues another run's optimiser and history on this model.
        self.run_id = uuid.uuid4().hex

    # ---- setup ---------------------------------------------------------------------------

    def _pairs(self, inputs: Sequence, targets: Sequence) -> None:
        """Training (and validation) patches of the (input, target) pairs."""
        config, card = self.config, self.card
        n_in = int(inputs[0].shape[0]) if len(inputs) else 0
        if len(inputs) and n_in != card.n_in:
            raise InputError(f"The model '{card.name}' expects {card.n_in} input channel(s) "
                             f"({', '.join(card.input_channels)}) but the chosen input has {n_in}.")
        common = dict(patch=config.patch, spatial_dims=card.spatial_dims, val_fraction=config.val_fraction,
                      seed=config.seed, input_normalisation=card.input_normalisation, input_names=None,
                      target_names=card.output_channels, z_window=z_window(card))
        self.train_data = PairedPatches(inputs, targets, augment=config.augment, split="train", **common)
        self.val_data = (PairedPatches(inputs, targets, augment=False, split="val", max_val_tiles=config.max_val_tiles, **common)
                         if config.val_fraction > 0 else None)

    def _use_source(self, batches: BatchSource, inputs: Sequence, targets: Sequence) -> None:
        # A programming error, not bad user input: plain ValueErrors.
        if len(inputs) or len(targets):
            raise ValueError("Give either inputs and targets or batches, not both.")
        if self.config.val_fraction > 0:
            raise ValueError("A batch source has no validation split: set val_fraction to 0 and score the model afterwards.")
        self.train_data, self.val_data = batches, None

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

    # ---- the services every step strategy goes through ------------------------------------

    def next_batch(self):
        """``(x, y, mask)`` on the device: one training batch (override to change what a step sees)."""
        return tuple(t.to(self.device) for t in self.train_data.sample_batch(self.config.batch_size))

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's prediction in [0, 1] under the run's precision policy."""
        with autocast_context(self.device, self.precision):
            pred = self.model(x)
        return _to_unit(pred.float(), self.card.output_activation)

    def critique(self, x: torch.Tensor, y: torch.Tensor):
        """The critic's scores (a multi-scale critic: its per-scale feature lists) for input ``x``
        and target ``y``, under the run's precision policy, as float32."""
        with autocast_context(self.device, self.precision):
            outputs = self.critic(torch.cat([x, y], dim=1))
        if is_multiscale(outputs):
            return [[f.float() for f in scale] for scale in outputs]
        return outputs.float()

    def update(self, optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor) -> bool:
        """Backpropagate ``loss`` and step ``optimizer`` through the non-finite guard (and, in
        fp16 on a GPU, the gradient scaler); returns whether the step was applied. The one way
        a strategy changes weights."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self._scaler(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        applied = self.apply_step(optimizer, module, loss, scaler)
        if optimizer is self.optimizer:
            self._generator_updates.append(applied)
        return applied

    def _scaler(self, optimizer: torch.optim.Optimizer) -> torch.amp.GradScaler | None:
        if not self.grad_scaling:
            return None
        if id(optimizer) not in self._scalers:
            self._scalers[id(optimizer)] = torch.amp.GradScaler(self.device.type)
        return self._scalers[id(optimizer)]

    # The guard as a method too: callers (and tests) have used Trainer.apply_step.
    apply_step = staticmethod(apply_step)

    def train_step(self) -> dict[str, float]:
        """One step of ``self.strategy`` on a fresh batch; ``skipped`` unless the guard let a
        generator update through (a strategy cannot report a refused step as taken)."""
        self.model.train()
        self._generator_updates = []
        losses = dict(self.strategy.step(self, self.next_batch()))
        losses.setdefault("train_loss", float("nan"))
        losses["skipped"] = not (self._generator_updates and all(self._generator_updates))
        return losses

    def request_stop(self, reason: str) -> None:
        """End the run after the current step (for callbacks); ``reason`` is recorded."""
        self._stop_reason = reason

    # ---- the loop --------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
            on_update: Callable[[TrainUpdate], None] | None = None,
            callbacks: Iterable[Callback] = ()) -> TrainResult:
        """Train until the planned steps/minutes, early stopping, Stop or a callback's
        ``request_stop``; ``callbacks`` run after the built-in ones (``callbacks.default_callbacks``).
        On a GPU the run first waits for its turn (``engine.gpu_turn``); Stop while waiting ends
        it before the first step, as Stop does."""
        # The time limit counts from the turn: waiting for another dock's job is not training.
        with device_turn(self, cancel):
            return self._train(progress, cancel, on_update, callbacks)

    def _train(self, progress, cancel, on_update, callbacks) -> TrainResult:
        config = self.config
        callbacks = default_callbacks(config, progress, on_update) + list(callbacks)
        start = time.perf_counter()
        max_seconds = config.max_minutes * 60.0 if config.max_minutes is not None else None
        first_step = self.step
        val_loss, val_step = None, None
        if self.history["val"]:
            val_step, val_loss = self.history["val"][-1]

        stopped_at_once = cancel is not None and cancel.is_set()  # e.g. while waiting for the GPU
        if self.val_data is not None and not self._validated_once and self.step == 0 and not stopped_at_once:
            val_loss, _ = self._validated(callbacks)
            val_step = 0
            self._validated_once = True

        self.reason = "steps"
        self._stop_reason = None  # as before callbacks: the validation before the first step never stops a run
        bad_in_a_row = 0
        bad_limit = MAX_BAD_STEPS_IN_A_ROW + (SCALER_BACKOFFS if self.grad_scaling else 0)
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
            lr = self._set_lr(self._progress_fraction(elapsed, max_seconds))
            losses = self.train_step()
            if losses["skipped"]:
                self.skipped_steps += 1
                bad_in_a_row += 1
                if bad_in_a_row >= bad_limit:
                    raise InputError(f"Training diverged at step {self.step + 1}: the loss or its gradients were not finite "
                                     f"{bad_in_a_row} steps in a row; lower the learning rate, use fp32 or check the data.")
            else:
                bad_in_a_row = 0
            self.step += 1
            if math.isfinite(losses["train_loss"]):
                self.history["train"].append((self.step, losses["train_loss"]))

            scores = None
            if self.val_data is not None and self.step % config.val_every == 0:
                val_loss, scores = self._validated(callbacks)
                val_step = self.step
            elapsed = time.perf_counter() - start
            per_step = elapsed / max(1, self.step - first_step)
            info = StepInfo(step=self.step, total_steps=self.total_steps, losses=losses, lr=lr, elapsed_s=elapsed,
                            sec_per_step=per_step, eta_s=self._eta(per_step, elapsed, max_seconds),
                            fraction=self._progress_fraction(elapsed, max_seconds),
                            time_limited=max_seconds is not None, val_loss=val_loss, val_step=val_step, scores=scores)
            for callback in callbacks:
                callback.on_step(self, info)
            if self._stop_reason is not None:
                self.reason = self._stop_reason
                break

        # A final validation unless the user asked to stop (Stop must be prompt) or the
        # last step was just validated.
        if (self.reason != "stopped" and self.val_data is not None and self.history["val"]
                and self.history["val"][-1][0] != self.step):
            self._validated(callbacks)
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
        result = TrainResult(stopped=self.reason == "stopped", reason=self.reason, steps=self.step,
                             best_step=self.stopper.best_step, best_val_loss=best_loss, seconds=self.seconds_before,
                             scores=self.best_scores, history=copy.deepcopy(self.history), card=self.trained_card())
        for callback in callbacks:
            callback.on_end(self, result)
        return result

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
