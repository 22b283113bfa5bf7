"""The Fine-tune dock: train or fine-tune a model on the user's own labelled pairs.

Pick the input layer and the target layers, a starting point (a model to fine-tune or
an architecture from scratch) and press Train: a live loss curve, a preview layer on a
validation patch, seconds per step and time left. Stop keeps the best model so far;
Resume continues; Save writes it to the user model folder, where the Virtual Stain dock
finds it at once; Export writes it as a bioimage.io package (.zip) for other tools.
"""

from __future__ import annotations

import weakref

from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, Select, SpinBox
from napari.layers import Image
from qtpy.QtWidgets import QFileDialog, QMessageBox, QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..engine.memory import empty_device_caches
from ..errors import InputError
from ..io.outputs import check_output_file
from ..models.registry import list_models, user_model_dir
from ..training.layer_pairs import TrainingImage
from ..training.trainer import Trainer
from ..workflows import finetune as workflow
from ..workflows import finetune_outputs as outputs
from ..workflows.finetune import ARCH_2_5D, FRESH_NETWORKS, FineTuneSettings
from ..workflows.settings_files import settings_file
from ._plot import LinePlot
from .finetune_feedback import TrainingFeedback, UpdateRelay
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_info

LOSSES = ["l1", "smooth_l1", "ssim_l1", "l1_l2"]
GANS = ["none", "vanilla", "lsgan", "wgan-gp"]
PRECISIONS = ["fp32", "auto", "bf16"]
EXPORT_TIP = "write the model as a bioimage.io package (.zip) for other tools"


def confirm_replace(parent, text: str) -> bool:
    """Ask before a save replaces a model (tests patch this)."""
    answer = QMessageBox.question(parent, "Replace model?", text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def ask_package_path(parent, suggestion: str) -> str | None:
    """Where to write a bioimage.io package (tests patch this)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export bioimage.io package", suggestion, "bioimage.io package (*.zip)")
    return path or None


def release_on_close(dock: "FineTuneWidget") -> None:
    """When the dock goes, give its model and optimiser (device memory) back.

    A run still going is cancelled by the dock's end and keeps what it trained
    (:func:`keep_unsaved`); its trainer is let go once the run has ended. Plain Python and a
    weak reference: the dock may be deleted by then.
    """
    ref = weakref.ref(dock)

    def forget(*_) -> None:
        gone = ref()
        if gone is not None:
            gone.trainer = gone.job = gone._life.job = None
        empty_device_caches()

    def clean_up() -> None:
        gone = ref()
        job = gone.job if gone is not None else None
        if job is not None and not job.settled:
            job.worker.finished.connect(forget)  # after the run's own handlers (the kept model)
        else:
            forget()

    dock._life.on_close.append(clean_up)


def keep_unsaved(trainer: Trainer):
    """What to do with a run whose dock closed while it trained: keep the model trained so far, and say where."""
    def keep(result) -> None:
        path = outputs.keep_unsaved(trainer)
        if path is not None:
            show_info(f"The Fine-tune dock closed during training: the model trained so far ({trainer.step} steps) "
                      f"was kept as {path}.")
    return keep


class FineTuneWidget(TrainingFeedback, JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.trainer: Trainer | None = None
        self.job: Job | None = None
        self.relay, self.updates = ProgressRelay(), UpdateRelay()
        release_on_close(self)

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
        self.export_button = PushButton(text="Export", enabled=False, tooltip=EXPORT_TIP)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.run_state_label = Label(value="state: ready")
        self.status = Label(value="")
        self.plot = LinePlot("loss", x_label="step", y_label="loss", log_y=True)
        buttons = Container(widgets=[self.train_button, self.stop_button, self.resume_button, self.save_button,
                                     self.export_button], layout="horizontal", labels=False)
        self.container = Container(widgets=[self.input, self.targets, self.start, self.name, self.patch, self.planes,
                                            self.steps, self.minutes, self.loss, self.gan, self.device, self.precision,
                                            buttons, self.progress, self.run_state_label, self.status])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addWidget(self.plot)
        layout.addStretch()

        label = st.start_label(self.start.choices)
        if label is not None:
            self.start.value = label
        self._bind()
        self.start.changed.connect(lambda *_: self._set_running(False))  # a saved run can be resumed
        for button, action in ((self.train_button, self.train), (self.stop_button, self.stop),
                               (self.resume_button, self.resume), (self.save_button, self.save),
                               (self.export_button, self.export)):
            button.changed.connect(action)
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
            self.settings.choose_start(start)
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
        return list(FRESH_NETWORKS) + [e.name for e in list_models(task="stain")]

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
        snapshot = self.settings.remember("finetune").for_plane(  # the run's own copy, remembered
            self._current_plane(self.viewer.layers[source.name]), all(self.viewer.layers[t.name].ndim == 2 for t in targets))
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

    def resume(self, *_):
        """Continue this session's run, or a run saved earlier (the chosen model's saved state)."""
        if self.trainer is None:
            saved = outputs.saved_run(self.start.value)
            if saved is None:
                return
            try:
                self.trainer = self._build_trainer(resume=saved)
            except Exception as err:
                self.trainer = None
                report_error(err, "Resuming")
                return
            self._plot_history(self.trainer.history)
        workflow.continue_for(self.trainer, self.steps.value)
        self._start_job()

    def _start_job(self):
        # Stop ends the run normally, with the best weights (workflows.finetune.run).
        self.job = Job(workflow.run, self.trainer, on_update=self.updates, on_result=self._on_result,
                       on_done=self._on_done, action="Training", relay=self.relay,
                       on_abandoned=keep_unsaved(self.trainer))
        self._set_running(True)
        self.launch(self.job)

    stop = JobDockMixin.cancel  # Stop ends training normally, keeping the best model

    def save(self, *_):
        if self.trainer is None:
            return
        name = self.name.value.strip()
        problem = outputs.name_problem(name)
        if problem:
            report_error(InputError(problem), "Saving")
            self.status.value = f"not saved: {problem}"
            return
        question = outputs.replace_question(name)
        if question is not None and not confirm_replace(self, question):
            self.status.value = f"not saved: '{name}' is kept as it was."
            return
        try:
            path = outputs.save_model(self.trainer, name)
        except Exception as err:
            report_error(err, "Saving")
            return
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
            model, card = outputs.export_model(self.trainer, name)
        except Exception as err:
            report_error(err, "Export")
            return
        self.status.value = f"exporting {output.name}..."
        self.job = Job(outputs.write_package, model, card, output, on_result=self._on_exported, on_done=self._on_done,
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
        self.resume_button.enabled = not running and (self.trainer is not None or outputs.saved_run(self.start.value) is not None)
        self.save_button.enabled = not running and self.trainer is not None
        problems = self.settings.export_problems(self.trainer.card if self.trainer is not None else None)
        self.export_button.enabled = not running and self.trainer is not None and not problems
        self.export_button.tooltip = problems[0] if problems else EXPORT_TIP

    def _on_done(self):
        self._set_running(False)
