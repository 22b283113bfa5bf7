"""The fine-tune workflow: settings -> problems() -> prepare() -> run() -> TrainResult.

The Fine-tune dock and ``virtual-stain train`` both describe a run as
:class:`FineTuneSettings` and the picked images as
:class:`~napari_virtual_stain.training.layer_pairs.TrainingImage`, and get their Trainer
from :func:`prepare`: the same channel names, patch, validation rhythm and starting
weights (drawn from the seed), so the same choices give the same model and card whichever
door the user came through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from psygnal import evented

from ..errors import InputError, VirtualStainError
from ..training.config import DEFAULT_STEPS, TrainConfig, TrainResult
from ..training.defaults import DEFAULT_PATCH_SIDE, learning_rate, patch_for
from ..training.layer_pairs import TrainingImage, WindowRequest, data_dims, training_pairs
from .settings_files import Remembered

NO_GAN = "none"
# The architecture whose network reads a window of z planes (models.unet25d, models.zwindow).
ARCH_2_5D = "unet-2.5d"
# The fresh networks the Fine-tune dock offers to start from: label -> (architecture, spatial dims).
FRESH_NETWORKS = {
    "new: U-Net (2D)": ("unet", 2),
    "new: U-Net (3D, for z-stacks)": ("unet", 3),
    "new: U-Net 2.5D (z planes -> one plane)": (ARCH_2_5D, 2),
    "new: pix2pix U-Net-256": ("pix2pix_unet", 2),
    "new: pix2pixHD (coarse-to-fine)": ("pix2pixhd", 2),
    "new: TransUNet": ("transunet", 2),
    "new: ResNet generator": ("resnet_generator", 2),
}


@evented
@dataclass
class FineTuneSettings(Remembered):
    """How to train, besides the images: the same for the dock and ``virtual-stain train``.

    Start from ``arch`` (a fresh network, ``models.factory``'s name) or ``from_model`` (a
    model to fine-tune): exactly one. ``spatial_dims`` None takes the data's (3 for a
    z-stack) or the model's. ``patch``: one side (``training.defaults.patch_for``) or every
    size. Length: ``steps``, ``epochs`` and/or ``minutes`` (whichever ends first; none: 500
    steps). ``lr`` None: ``training.defaults.learning_rate`` (lower when fine-tuning a
    trained model). ``val_every``/``preview_every`` None: about ten validations and twenty previews
    per run. A 2.5D model (``arch`` unet-2.5d, or fine-tuning one) reads ``planes`` z
    planes (None: the whole stack for a one-plane target, 5 for a target stack; a model
    being fine-tuned keeps its own) and a one-plane target belongs to stack plane
    ``target_plane`` (None: the middle); ``training.layer_pairs.window_for_pair`` places it.
    """

    arch: str | None = "unet"
    from_model: str | None = None
    spatial_dims: int | None = None
    arch_args: dict | None = None
    name: str = "my-model"
    patch: tuple[int, ...] = (DEFAULT_PATCH_SIDE,)
    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 8
    lr: float | None = None
    lr_schedule: str = "constant"
    loss: str = "l1"
    alpha: float = 0.5
    gan: str = NO_GAN
    critic: str = "patchgan"
    gan_weight: float | None = None
    n_critic: int | None = None
    patience: int | None = None
    val_fraction: float = 0.15
    val_every: int | None = None
    preview_every: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    z_as_channels: bool = False
    planes: int | None = None
    target_plane: int | None = None

    # -- where to start -----------------------------------------------------------------------
    def choose_start(self, start: str | None) -> None:
        """Start from a :data:`FRESH_NETWORKS` label (a new network) or a model's name (fine-tune it)."""
        if start in FRESH_NETWORKS:
            (self.arch, self.spatial_dims), self.from_model = FRESH_NETWORKS[start], None
        else:
            self.arch, self.from_model, self.spatial_dims = None, start, None

    def start_label(self, choices) -> str | None:
        """The entry of ``choices`` that shows these settings' starting point (None: none does)."""
        if self.from_model:
            return self.from_model if self.from_model in choices else None
        return next((label for label, (arch, dims) in FRESH_NETWORKS.items()
                     if arch == self.arch and dims == (self.spatial_dims or 2)), None)

    def for_plane(self, plane: int | None, targets_are_planes: bool) -> "FineTuneSettings":
        """These settings for a run whose one-plane targets belong to stack plane ``plane``
        (the plane the viewer shows; a 2.5D run only, and never remembered)."""
        if self.window_request() is not None and targets_are_planes:
            self.target_plane = plane
        return self

    # -- checks -------------------------------------------------------------------------------
    def model_dims(self) -> int | None:
        """The model's 2D/3D as far as the settings say (None: the data decides)."""
        if self.arch == ARCH_2_5D and not self.from_model:
            return 2  # a window of planes in, one plane out
        if self.spatial_dims is not None or not self.from_model:
            return self.spatial_dims
        from ..models.registry import model_card

        return model_card(self.from_model).spatial_dims

    def start_window(self):
        """The z window of the model being fine-tuned (None: a fresh network or not a 2.5D model)."""
        if not self.from_model:
            return None
        from ..models.registry import model_card
        from ..models.zwindow import z_window

        return z_window(model_card(self.from_model))

    def window_request(self) -> WindowRequest | None:
        """What the pairs of a 2.5D run need (None: not a 2.5D run)."""
        fixed = self.start_window()
        if fixed is None and not (self.arch == ARCH_2_5D and not self.from_model):
            return None
        return WindowRequest(self.planes, self.target_plane, fixed)

    def _window_problems(self, card) -> list[str]:
        from ..models.zwindow import z_window

        given = None if card is None else z_window(card)
        two_and_a_half = (self.arch == ARCH_2_5D and not self.from_model) or given is not None
        found = []
        if not two_and_a_half:
            if self.planes is not None or self.target_plane is not None:
                found.append(f"Planes and a target plane are for 2.5D models: train one with the architecture "
                             f"{ARCH_2_5D} (--arch {ARCH_2_5D}).")
            return found
        if self.z_as_channels:
            found.append("A 2.5D model reads its planes from the stack itself: leave out --z-as-channels.")
        if self.spatial_dims == 3:
            found.append("A 2.5D model predicts 2D planes from a window of z planes; it has no 3D form.")
        if self.planes is not None and self.planes < 2:
            found.append(f"A 2.5D model reads at least 2 planes, not {self.planes} (one plane is a 2D U-Net's input).")
        elif self.planes is not None and given is not None and given.planes != self.planes:
            found.append(f"The model '{card.name}' reads {given.planes} planes; it cannot be fine-tuned "
                         f"on windows of {self.planes}.")
        if self.target_plane is not None and self.target_plane < 0:
            found.append(f"The target plane is a plane of the stack (0 is the first), not {self.target_plane}.")
        return found

    def problems(self) -> list[str]:
        """Sentences for what would stop a run, cheapest checks only (no network is built)."""
        from ..engine.device import resolve_device
        from ..models.factory import ARCHITECTURES, _load_builtin_architectures
        from ..models.registry import model_card

        found, card = [], None
        try:
            resolve_device(self.device)
        except VirtualStainError as err:
            found.append(str(err))
        if bool(self.arch) == bool(self.from_model):
            found.append("Say where to start: a model to fine-tune or an architecture to train from scratch (one of them).")
        elif self.arch:
            _load_builtin_architectures()
            if self.arch not in ARCHITECTURES:
                found.append(f"There is no architecture called {self.arch!r} (known: {', '.join(sorted(ARCHITECTURES))}).")
        else:
            try:
                card = model_card(self.from_model)
            except VirtualStainError as err:
                return found + [str(err)]
            if card.task != "stain":
                found.append(f"The model '{card.name}' is a {card.task} model; fine-tune a virtual staining model.")
            elif self.spatial_dims not in (None, card.spatial_dims):
                found.append(f"The model '{card.name}' is {card.spatial_dims}D, not {self.spatial_dims}D.")
        found += self._window_problems(card)
        if self.spatial_dims not in (None, 2, 3):
            found.append(f"A model is 2D or 3D, not {self.spatial_dims}D.")
        if not self.patch or any(int(p) < 1 for p in self.patch):
            found.append(f"The training patch must be at least 1 pixel along every axis, not {tuple(self.patch)}.")
        elif len(self.patch) not in (1, 2, 3):
            found.append(f"The training patch needs one side or 2 or 3 sizes, not {len(self.patch)}.")
        else:
            dims = self.spatial_dims or (len(self.patch) if len(self.patch) > 1 else 2)
            try:
                self.train_config(dims).check(dims)
            except InputError as err:
                found.append(str(err))
        return found

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError(problems[0])

    def export_problems(self, card=None) -> list[str]:
        """What stops a bioimage.io export of the model these settings train (``card``: the
        trained one's, when there is one): a 2.5D model cannot be described yet."""
        from .finetune_outputs import export_problems

        if card is not None:
            return export_problems(card)
        try:
            two_and_a_half = self.window_request() is not None
        except VirtualStainError:  # a model that cannot be read: problems() says so
            return []
        return (["A 2.5D model (a window of z planes in, one plane out) cannot be exported as a bioimage.io "
                 "package yet: share its .pt file instead."] if two_and_a_half else [])

    # -- what the Trainer gets ------------------------------------------------------------------
    def train_config(self, spatial_dims: int, best_path: str | None = None) -> TrainConfig:
        steps = self.steps
        if steps is None and self.epochs is None and self.minutes is None:
            steps = DEFAULT_STEPS
        # About ten validations and twenty previews a run; 50 and 10 when only time bounds it.
        val_every = self.val_every or (max(5, min(50, steps // 10)) if steps else 50)
        preview_every = self.preview_every or (max(2, min(10, steps // 20)) if steps else 10)
        patch = patch_for(spatial_dims, self.patch[0]) if len(self.patch) == 1 else tuple(int(p) for p in self.patch)
        return TrainConfig(
            patch=patch, batch_size=self.batch_size, steps=steps, epochs=self.epochs, max_minutes=self.minutes,
            lr=learning_rate(self.lr, bool(self.from_model), None if self.gan in (None, NO_GAN) else self.gan),
            loss=self.loss, alpha=self.alpha, gan=None if self.gan in (None, NO_GAN) else self.gan,
            critic=self.critic, gan_weight=self.gan_weight, n_critic=self.n_critic, lr_schedule=self.lr_schedule,
            patience=self.patience, val_fraction=self.val_fraction, val_every=val_every, preview_every=preview_every,
            seed=self.seed, device=self.device, precision=self.precision, best_path=best_path)


def prepare(settings: FineTuneSettings, image: TrainingImage, targets: Sequence[TrainingImage], *,
            resume: str | Path | None = None, best_path: str | Path | None = None):
    """The Trainer for ``settings`` on these images, ready to ``run``.

    ``resume``: a model file of an earlier run whose state lies beside it (``.state.pt``):
    its weights, optimiser, step and histories continue. ``best_path``: where the best model
    is written during the run (the command line's output).
    """
    import torch

    from ..models.checkpoint import load_checkpoint
    from ..training.starting import model_for_training
    from ..training.trainer import Trainer

    settings.validate()
    dims = settings.model_dims()
    if dims is None and resume is not None:
        dims = load_checkpoint(resume)[1].spatial_dims
    if dims is None:
        dims = data_dims(image, settings.z_as_channels)
    window = settings.window_request()
    if resume is not None:  # a resumed run keeps the window its card records
        from ..models.registry import model_card
        from ..models.zwindow import z_window

        fixed = z_window(model_card(str(resume)))
        window = None if fixed is None else WindowRequest(settings.planes, settings.target_plane, fixed)
    pairs = training_pairs(image, targets, dims, settings.z_as_channels, z_window=window)
    if resume is not None:
        model, card = load_checkpoint(resume)
    else:
        arch_args = settings.arch_args
        if pairs.z_window is not None and not settings.from_model:  # the card records the window
            arch_args = {**(arch_args or {}), "planes": pairs.z_window.planes, "centre": pairs.z_window.centre}
        # The fresh weights (a new network, a replaced head) come from the run's seed, so the
        # same settings train the same model whichever door started them.
        torch.manual_seed(settings.seed)
        model, card = model_for_training(
            from_model=settings.from_model or None, arch=None if settings.from_model else settings.arch,
            n_in=len(pairs.input_names), n_out=len(pairs.target_names), spatial_dims=pairs.spatial_dims,
            input_names=pairs.input_names, output_names=pairs.target_names, arch_args=arch_args,
            name=settings.name)
    config = settings.train_config(pairs.spatial_dims, best_path=None if best_path is None else str(best_path))
    trainer = Trainer(model, card, pairs.inputs, pairs.targets, config)
    trainer.source_planes = pairs.source_planes  # where the dock draws a pair's preview in a stack
    if resume is not None:
        trainer.resume(resume)
    return trainer


def continue_for(trainer, steps: int) -> None:
    """A finished run resumed goes on for ``steps`` more steps (an unfinished one continues its plan)."""
    if trainer.total_steps is not None and trainer.step >= trainer.total_steps:
        trainer.total_steps = trainer.step + int(steps)


def run(trainer, progress=None, cancel=None, on_update=None) -> TrainResult:
    """Train (or continue) until the planned length, early stopping or cancel (a normal end
    that keeps the best weights); ``trainer.save(path)`` then writes the model."""
    return trainer.run(progress=progress, cancel=cancel, on_update=on_update)
