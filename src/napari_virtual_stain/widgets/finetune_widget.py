"""The Fine-tune dock: train or fine-tune a model on the user's own labelled pairs.

Pick the input layer and the target layers, a starting point (a model to fine-tune or
an architecture from scratch) and press Train: a live loss curve, a preview layer on a
validation patch, seconds per step and time left. Stop keeps the best model so far;
Resume continues; Save writes it to the user model folder, where the Virtual Stain dock
finds it at once; Export writes it as a bioimage.io package (.zip) for other tools.
"""

from __future__ import annotations

import re
import time

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, Select, SpinBox
from napari.layers import Image
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QFileDialog, QMessageBox, QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..errors import InputError, VirtualStainError
from ..io.outputs import check_output_file
from ..models.registry import list_models, notify_models_changed, resolve_model, user_model_dir
from ..tasks.layers import overlay_tuples
from ..training.layer_pairs import TrainingImage
from ..training.trainer import Trainer
from ..workflows import finetune as workflow
from ..workflows.finetune import ARCH_2_5D, FineTuneSettings
from ..workflows.settings_files import settings_file
from ._output_layers import publish
from ._plot import LinePlot
from .geometry import placement, spatial_axes
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_info

# Fresh networks: label -> (architecture, spatial dims).
ARCHITECTURES = {
    "new: U-Net (2D)": ("unet", 2),
    "new: U-Net (3D, for z-stacks)": ("unet", 3),
    "new: U-Net 2.5D (z planes -> one plane)": ("unet-2.5d", 2),
    "new: pix2pix U-Net-256": ("pix2pix_unet", 2),
    "new: pix2pixHD (coarse-to-fine)": ("pix2pixhd", 2),
    "new: TransUNet": ("transunet", 2),
    "new: ResNet generator": ("resnet_generator", 2),
}
LOSSES = ["l1", "smooth_l1", "ssim_l1", "l1_l2"]
GANS = ["none", "vanilla", "lsgan", "wgan-gp"]
PRECISIONS = ["fp32", "auto", "bf16"]


def start_label(settings: FineTuneSettings, choices) -> str | None:
    """The "start from" entry that shows these settings' starting point (None: none does)."""
    if settings.from_model:
        return settings.from_model if settings.from_model in choices else None
    return next((label for label, (arch, dims) in ARCHITECTURES.items()
                 if arch == settings.arch and dims == (settings.spatial_dims or 2)), None)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a saved model (one sentence), or None."""
    if not name:
        return "Type a name for the model in 'save as' first."
    if not NAME.fullmatch(name) or name.endswith(".state"):  # x.state.pt is a training state file
        return (f"'{name}' cannot be a model name: use up to 100 letters, digits, '-', '_' and '.', starting "
                "with a letter or digit and without slashes (for example 'my-model').")
    return None


def confirm_replace(parent, text: str) -> bool:
    """Ask before a save replaces a model (tests patch this)."""
    answer = QMessageBox.question(parent, "Replace model?", text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def ask_package_path(parent, suggestion: str) -> str | None:
    """Where to write a bioimage.io package (tests patch this)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export bioimage.io package", suggestion, "bioimage.io package (*.zip)")
    return path or None


def _export(model, card, path, cancel=None):
    """Worker body: write the package (validated by bioimageio.spec). Touches no Qt."""
    from ..models.bioimageio_export import export_model

    return export_model(model, card, path)


class UpdateRelay(QObject):
    updated = Signal(object)

    def __call__(self, update) -> None:  # from the worker thread
        self.updated.emit(update)


def keep_unsaved(trainer: Trainer):
    """What to do with a run whose dock closed while it trained: keep its best model (and its
    resume state) in the user folder's ``unsaved/`` (not listed with the models), and say where."""
    def keep(result) -> None:
        if trainer.step == 0:
            return
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", trainer.card.name or "fine-tuned").strip("._") or "fine-tuned"
        path = user_model_dir() / "unsaved" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.pt"
        trainer.save(path)
        show_info(f"The Fine-tune dock closed during training: the model trained so far ({trainer.step} steps) "
                  f"was kept as {path}.")
    return keep


def _train(trainer: Trainer, on_update=None, progress=None, cancel=None):
    """Worker body: run (or continue) training; Stop ends it normally with the best weights."""
    return workflow.run(trainer, progress=progress, cancel=cancel, on_update=on_update)


class FineTuneWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.trainer: Trainer | None = None
        self.job: Job | None = None
        self.relay, self.updates = ProgressRelay(), UpdateRelay()

        # The dock is a view of these settings: the same object ``virtual-stain train`` builds,
        # remembered between launches of napari.
        self.settings = FineTuneSettings.load(settings_file("finetune"))
        st = self.settings
        self.input = ComboBox(label="input", choices=self._image_layers)
        self.targets = Select(label="targets", choices=self._image_layers)
        self.start = ComboBox(label="start from", choices=self._starting_points)
        self.name = LineEdit(label="save as", value=st.name)
        self.patch = SpinBox(label="patch", value=int(st.patch[0]) if len(st.patch) == 1 else 128, min=16, max=1024,
                             step=16, tooltip="training patch side: P x P in 2D; min(16, P/4) x P/2 x P/2 for 3D models")
        self.planes = SpinBox(label="planes", value=st.planes or 0, min=0, max=64,
                              tooltip="2.5D: z planes the model reads around the predicted plane (0 = the whole "
                                      "stack for a one-plane target, 5 for a target stack); a one-plane target "
                                      "belongs to the plane the viewer shows")
        self.steps = SpinBox(label="steps", value=st.steps or 500, min=1, max=1_000_000)
        self.minutes = FloatSpinBox(label="max minutes", value=st.minutes or 0.0, min=0.0, max=10_000, step=0.5,
                                    tooltip="0 = no time limit (the steps decide)")
        self.loss = ComboBox(label="loss", choices=LOSSES, value=st.loss if st.loss in LOSSES else "l1")
        self.gan = ComboBox(label="adversarial", choices=GANS, value=st.gan if st.gan in GANS else "none")
        devices = available_devices()
        self.device = ComboBox(label="device", choices=devices, value=st.device if st.device in devices else "auto")
        self.precision = ComboBox(label="precision", choices=PRECISIONS,
                                  value=st.precision if st.precision in PRECISIONS else "fp32",
                                  tooltip="fp32 (default) trains exactly; auto/bf16 are faster where the hardware has bf16")
        self.train_button, self.stop_button = PushButton(text="Train"), PushButton(text="Stop", enabled=False)
        self.resume_button, self.save_button = PushButton(text="Resume", enabled=False), PushButton(text="Save", enabled=False)
        self.export_button = PushButton(text="Export", enabled=False,
                                        tooltip="write the model as a bioimage.io package (.zip) for other tools")
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.run_state_label = Label(value="state: ready")
        self.status = Label(value="")
        self.plot = LinePlot("loss", x_label="step", y_label="loss", log_y=True)
        buttons = Container(widgets=[self.train_button, self.stop_button, self.resume_button, self.save_button,
                                     self.export_button],
                            layout="horizontal", labels=False)
        self.container = Container(widgets=[self.input, self.targets, self.start, self.name, self.patch, self.planes,
                                            self.steps,
                                            self.minutes, self.loss, self.gan, self.device, self.precision, buttons,
                                            self.progress, self.run_state_label, self.status])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addWidget(self.plot)
        layout.addStretch()

        label = start_label(st, self.start.choices)
        if label is not None:
            self.start.value = label
        self._bind()
        self.start.changed.connect(lambda *_: self._set_running(False))  # a saved run can be resumed
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.resume_button.changed.connect(self.resume)
        self.save_button.changed.connect(self.save)
        self.export_button.changed.connect(self.export)
        self.relay.progressed.connect(self._on_progress)
        self.updates.updated.connect(self._on_update)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.reset_choices)
        for chooser in (self.input, self.targets):
            chooser.changed.connect(self._check_settings)
        self._check_settings()

    def _bind(self) -> None:
        """Each field writes its settings value; the settings' events re-check whether Train can run."""
        st = self.settings

        def bind(widget, name, convert=lambda v: v):
            setattr(st, name, convert(widget.value))
            widget.changed.connect(lambda value: setattr(st, name, convert(value)))

        bind(self.name, "name", lambda v: str(v).strip())
        bind(self.patch, "patch", lambda v: (int(v),))
        bind(self.steps, "steps", int)
        bind(self.minutes, "minutes", lambda v: float(v) or None)
        self.planes.changed.connect(lambda value: setattr(st, "planes", (int(value) or None) if self.planes.enabled
                                                          else None))
        for widget, name in ((self.loss, "loss"), (self.gan, "gan"), (self.device, "device"),
                             (self.precision, "precision")):
            bind(widget, name)
        self._start_chosen()
        self.start.changed.connect(self._start_chosen)
        st.events.connect(self._check_settings)

    def _start_chosen(self, *_) -> None:
        start = self.start.value
        with self.settings.events.blocked():  # one check once all are set
            if start in ARCHITECTURES:
                self.settings.arch, self.settings.spatial_dims = ARCHITECTURES[start]
                self.settings.from_model = None
            else:
                self.settings.arch, self.settings.from_model, self.settings.spatial_dims = None, start, None
            # Planes are chosen for a new 2.5D network only; a 2.5D model being fine-tuned keeps its own.
            self.planes.enabled = self.settings.arch == ARCH_2_5D
            self.settings.planes = (int(self.planes.value) or None) if self.planes.enabled else None
        self._check_settings()

    # -- choices ---------------------------------------------------------------------------
    def _image_layers(self, *_):
        # RGB layers too: an IHC image or tissue photograph as input, DeepLIIF's RGB panels as targets.
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Image) and "source_layer" not in layer.metadata]

    def _starting_points(self, *_):
        return list(ARCHITECTURES) + [e.name for e in list_models(task="stain")]

    def reset_choices(self, *_):
        for widget in (self.input, self.targets, self.start):
            widget.reset_choices()

    # -- actions ---------------------------------------------------------------------------
    def _selection_problems(self) -> list[str]:
        if self.input.value is None:
            return ["Choose an input layer (the label-free image)."]
        if not [t for t in self.targets.value if t != self.input.value]:
            return ["Choose at least one target layer (the real stain the model should learn)."]
        return []

    def _check_settings(self, *_) -> list[str]:
        """Train is enabled only with settings and layers that can train; the first problem is its tooltip."""
        problems = self._selection_problems() + self.settings.problems()
        idle = self.job is None or not self.job.running
        self.train_button.enabled = idle and not problems
        self.train_button.tooltip = problems[0] if problems else ""
        return problems

    def _images(self) -> tuple[TrainingImage, list[TrainingImage]]:
        def image(name):
            layer = self.viewer.layers[name]
            return TrainingImage(layer.data, layer.name, rgb=layer.rgb)

        problems = self._selection_problems()
        if problems:
            raise InputError(problems[0])
        return image(self.input.value), [image(t) for t in self.targets.value if t != self.input.value]

    def _build_trainer(self, resume=None) -> Trainer:
        source, targets = self._images()
        snapshot = self.settings.copy()  # the run's own copy: the user may change the dock
        try:
            snapshot.save(settings_file("finetune"))
        except OSError:  # remembering is a convenience, never a reason not to train
            pass
        if snapshot.window_request() is not None and all(self.viewer.layers[t.name].ndim == 2 for t in targets):
            # A one-plane target belongs to the plane the viewer shows now (not remembered).
            snapshot.target_plane = self._current_plane(self.viewer.layers[source.name])
        trainer = workflow.prepare(snapshot, source, targets, resume=resume)
        trainer.source_layer = self.viewer.layers[source.name]  # where previews are drawn
        return trainer

    def _current_plane(self, layer) -> int | None:
        """The z plane of a stack layer the viewer shows (None for a plane or a colour image)."""
        if layer.rgb or layer.ndim != 3:
            return None
        z = int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))
        return min(max(z, 0), int(layer.data.shape[0]) - 1)

    def train(self, *_):
        if self.job is not None and self.job.running:
            return
        try:
            self.trainer = self._build_trainer()
        except Exception as err:
            report_error(err, "Training")
            return
        self.plot.clear()
        self._start_job()

    def _saved_run(self):
        """The chosen model's file if a saved run (its ``.state.pt``) lies beside it, else None."""
        if self.start.value is None or self.start.value in ARCHITECTURES:
            return None
        try:
            path = resolve_model(self.start.value)
        except VirtualStainError:
            return None
        return path if path.with_suffix(".state.pt").is_file() else None

    def resume(self, *_):
        """Continue this session's run, or a run saved earlier (the chosen model's saved state)."""
        if self.trainer is None:
            saved = self._saved_run()
            if saved is None:
                return
            try:
                self.trainer = self._build_trainer(resume=saved)
            except Exception as err:
                self.trainer = None
                report_error(err, "Resuming")
                return
            self.plot.set_series("train", self.trainer.history.get("train", []))
            self.plot.set_series("validation", self.trainer.history.get("val", []))
        if self.trainer.total_steps is not None and self.trainer.step >= self.trainer.total_steps:
            self.trainer.total_steps = self.trainer.step + self.steps.value  # finished: go on for more steps
        self._start_job()

    def _start_job(self):
        self.job = Job(_train, self.trainer, self.updates, on_result=self._on_result, on_done=self._on_done,
                       action="Training", relay=self.relay, on_abandoned=keep_unsaved(self.trainer))
        self._set_running(True)
        self.launch(self.job)

    stop = JobDockMixin.cancel  # Stop ends training normally, keeping the best model

    def save(self, *_):
        if self.trainer is None:
            return
        name = self.name.value.strip()
        problem = name_problem(name)
        if problem:
            report_error(InputError(problem), "Saving")
            self.status.value = f"not saved: {problem}"
            return
        existing = next((e for e in list_models() if e.name == name), None)
        if existing is not None and not confirm_replace(self, (
                f"A model called '{name}' is already in your model folder. Replace it?" if existing.source == "user"
                else f"'{name}' is a bundled model; a model saved under that name is used instead of it. Save anyway?")):
            self.status.value = f"not saved: '{name}' is kept as it was."
            return
        try:
            self.trainer.card.name = name
            path = self.trainer.save(user_model_dir() / f"{name}.pt")
        except OSError as err:
            report_error(InputError(f"Could not write the model to {user_model_dir()}: {err.strerror or err}."), "Saving")
            return
        except Exception as err:
            report_error(err, "Saving")
            return
        notify_models_changed()
        self.reset_choices()
        show_info(f"Saved '{name}' to {path}; it is now in the Virtual Stain dock.")
        self.status.value = f"saved {path.name}"

    def export(self, *_):
        """The best model so far as a bioimage.io package, written in a worker."""
        if self.trainer is None or (self.job is not None and self.job.running):
            return
        name = self.name.value.strip() or "model"
        path = ask_package_path(self, str(user_model_dir() / f"{name}.zip"))
        if not path:
            return
        try:
            output = check_output_file(path, suffixes=(".zip",), label="package")
            from ..models.factory import build_model

            card = self.trainer.trained_card()
            card.name = name
            model = build_model(card.architecture, card.arch_args)
            model.load_state_dict(self.trainer.best_state)
        except Exception as err:
            report_error(err, "Export")
            return
        self.status.value = f"exporting {output.name}..."
        self.job = Job(_export, model, card, output, on_result=self._on_exported, on_done=self._on_done,
                       action="Export")
        self._set_running(True)
        self.launch(self.job)

    def _on_exported(self, path):
        show_info(f"Wrote the bioimage.io package {path}.")
        self.status.value = f"exported {path.name}"

    # -- feedback --------------------------------------------------------------------------
    def _set_running(self, running: bool):
        if running:
            self.train_button.enabled = False
        else:
            self._check_settings()
        self.stop_button.enabled = running
        self.resume_button.enabled = not running and (self.trainer is not None or self._saved_run() is not None)
        self.save_button.enabled = not running and self.trainer is not None
        self.export_button.enabled = not running and self.trainer is not None

    def _on_update(self, update):
        if not self.dock_alive():
            return
        history = self.trainer.history if self.trainer is not None else {}
        self.plot.set_series("train", history.get("train", []))
        self.plot.set_series("validation", history.get("val", []))
        eta = f"{update.eta_s / 60:.1f} min left" if update.eta_s is not None else ""
        val = f" · val {update.val_loss:.4g}" if update.val_loss is not None else ""
        self.status.value = f"step {update.step} · {update.sec_per_step:.2f} s/step · {eta}{val}"
        if update.preview is not None:
            self._show_preview(update.preview)

    def _show_preview(self, preview: np.ndarray):
        trainer = self.trainer
        source = trainer.source_layer
        if not self.dock_alive() or source not in self.viewer.layers:  # no previews for a removed layer
            return
        data = trainer.val_data if trainer.val_data is not None and len(trainer.val_data) else trainer.train_data
        pair, start = data.fixed_patch_origin()
        if source.ndim == 3 and trainer.card.spatial_dims == 2:  # pairs are planes of the stack (2D or 2.5D)
            planes = getattr(trainer, "source_planes", None) or range(source.data.shape[0])
            start, preview = (planes[pair],) + start, preview[:, None]
        names = [f"preview {c}" for c in trainer.card.output_channels]
        axes = spatial_axes(source, len(start))  # the preview covers the input's last spatial axes
        publish(self.viewer, overlay_tuples(preview, names, source.name, placement(source, axes, start),
                                            contrast=[(0.0, 1.0)] * len(names)))

    def _on_result(self, result):
        self.plot.set_series("train", result.history.get("train", []))
        self.plot.set_series("validation", result.history.get("val", []))
        why = {"stopped": "stopped", "early_stopping": "early stopping", "minutes": "time limit",
               "steps": "all steps done"}.get(result.reason, result.reason)
        best = f", best validation loss {result.best_val_loss:.4g} at step {result.best_step}" \
            if result.best_val_loss is not None else ""
        self.status.value = f"{why}: {result.steps} steps in {result.seconds / 60:.1f} min{best}. Save to use it."

    def _on_done(self):
        self._set_running(False)
