"""The Virtual Stain dock: pick a layer and a model, run on the current view or everything.

Thin by design: it reads choices, computes the visible box, and hands a core function
(workflows.stain.run_level) to a worker thread; results come back as LayerDataTuples.

A multiscale (pyramid) layer is predicted at one level: the current view at the level
napari displays or a coarser one nearer the model's pixel size (tasks.pyramid.choose_level),
the whole image at the level nearest the model's pixel size. The output is a multiscale
layer: that level's pixels and their block means at the input's coarser levels
(tasks.output_pyramid), placed over the input; each level keeps its own predicted pixels
for later views.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, RadioButtons
from napari.layers import Image
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.device import PRECISIONS, available_devices
from ..engine.predictor_cache import SHARED
from ..models.registry import list_models, load_model, model_card, program_notice, subscribe
from ..tasks.arrays import layout_for
from ..tasks.layers import overlay_tuples
from ..tasks.view_cache import LevelViewCaches, ViewCache
from ..workflows import stain as stain_workflow
from ..workflows.settings_files import settings_file
from ..workflows.stain import StainSettings
from ._output_layers import publish
from .geometry import layer_levels, level_view, spatial_axes
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_warning

CURRENT_VIEW = "current view"
WHOLE = "whole image / stack"
# A current view is filled in blocks of this many pixels, the middle first, each shown when done.
PROGRESSIVE_BLOCK = 512


class PartRelay(QObject):
    """Hands 'a block of the view is done' from the worker thread to the UI thread."""

    done = Signal()

    def __call__(self, box, values) -> None:  # called from the worker thread; the values are in the view cache
        self.done.emit()


def _predict(settings: StainSettings, levels, level: int, rgb: bool, name: str, region, stats=None,
             view_cache: ViewCache | None = None, on_part=None, progress=None, cancel=None):
    """Worker body: the staining workflow with a snapshot of the dock's settings. Touches no Qt."""
    block = PROGRESSIVE_BLOCK if on_part is not None else None
    return stain_workflow.run_level(settings, levels, level, rgb=rgb, name=name, region=region, stats=stats,
                                    view_cache=view_cache, load=load_model, progress=progress, cancel=cancel,
                                    block=block, on_part=on_part)


class VirtualStainWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._life.on_close.append(SHARED.release)  # give the models' (GPU) memory back with the dock
        # The dock is a view of these settings: the same object ``virtual-stain predict`` builds,
        # remembered between launches of napari.
        self.settings = StainSettings.load(settings_file("stain"))
        self._stats: dict = {}
        self._level_note: str | None = None  # a sentence when the pyramid has no level at the model's scale
        # (key, LevelViewCaches): pixels predicted so far at each pyramid level, reused by later views
        self._view_cache: tuple | None = None
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self.parts = PartRelay()
        self.parts.done.connect(self._on_part)
        self._filling: tuple | None = None  # (view region, its level's cache, layout) while a view fills in

        self.input = ComboBox(label="input", choices=self._image_layers)
        self.model = ComboBox(label="model", choices=self._model_names)
        # A bioimage.io package (its .zip or bioimageio.yaml/rdf.yaml) is used instead of the model above.
        self.package = FileEdit(label="or bioimage.io", mode="r", filter="*.zip *.yaml", value="",
                                tooltip="a bioimage.io model package: its .zip, or the bioimageio.yaml/rdf.yaml "
                                        "in its folder; used instead of the model above")
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        # "auto": bf16 where the hardware has it (2-3x faster, ~1e-3 mean error); fp32 for
        # bit-faithful, quantitative output.
        self.precision = ComboBox(label="precision", choices=list(PRECISIONS), value="auto",
                                  tooltip="auto = fastest accurate choice (bf16 on GPUs and bf16 CPUs); "
                                          "fp32 = bit-faithful results for quantitative work")
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=CURRENT_VIEW)
        self.live = CheckBox(text="follow the view (re-run after pan/zoom)", value=False)
        self.tta = CheckBox(text="test-time augmentation (8x slower)", value=self.settings.tta,
                            tooltip="average each tile's prediction over its 8 flips and quarter turns: "
                                    "smoother, usually slightly more accurate results for 8x the time")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.info = Label(value="")
        self.container = Container(widgets=[self.input, self.model, self.package, self.device, self.precision, self.scope, self.live, self.tta,
                                            Container(widgets=[self.run_button, self.cancel_button],
                                                      layout="horizontal", labels=False),
                                            self.progress, self.info])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addStretch()

        for widget, value in ((self.device, self.settings.device), (self.precision, self.settings.precision),
                              (self.model, self.settings.model)):
            if value in widget.choices:
                widget.value = value
        self.device.changed.connect(lambda value: setattr(self.settings, "device", value))
        self.precision.changed.connect(lambda value: setattr(self.settings, "precision", value))
        self.tta.changed.connect(lambda value: setattr(self.settings, "tta", bool(value)))
        for chooser in (self.model, self.package):
            chooser.changed.connect(lambda *_: setattr(self.settings, "model", self._model_key() or ""))
        self.settings.model = self._model_key() or ""
        self.settings.events.connect(self._check_settings)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.relay.progressed.connect(self._on_progress)
        self.model.changed.connect(self._describe_model)
        self.package.changed.connect(self._package_chosen)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.moved):
            event.connect(self.reset_choices)
        # "follow the view": re-run the current view once panning/zooming has paused.
        self._live_timer = QTimer(self, singleShot=True, interval=300, timeout=self._live_tick)
        for event in (self.viewer.camera.events.center, self.viewer.camera.events.zoom,
                      self.viewer.dims.events.current_step):
            event.connect(self._view_changed)
        subscribe(self._models_changed)  # a model saved in the Fine-tune dock appears at once
        self._describe_model()

    # -- choices ---------------------------------------------------------------------------
    def _image_layers(self, *_):
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Image) and "source_layer" not in layer.metadata]

    def _model_names(self, *_):
        return [e.name for e in list_models(task="stain")]

    def reset_choices(self, *_):
        self.input.reset_choices()
        self.model.reset_choices()

    def _models_changed(self):
        self.model.reset_choices()
        self._view_cache = None  # a model saved again under its name predicts other pixels

    def _package(self) -> str | None:
        text = str(self.package.value or "").strip()
        return text if text and text != "." and Path(text).exists() else None

    def _model_key(self):
        return self._package() or self.model.value

    def _package_chosen(self, *_):
        """Say before anything is loaded that a package's TorchScript or Python code is a program."""
        path = self._package()
        if path is None:
            self._describe_model()
            return
        try:
            notice = program_notice(path)
            card = model_card(path)
        except Exception as err:
            report_error(err, "bioimage.io package")
            self.info.value = "This package cannot be used (see the notification)."
            return
        self.info.value = (f"{card.name}: {', '.join(card.input_channels)} → {', '.join(card.output_channels)}"
                           + (f"\n{notice}" if notice else ""))
        self.info.tooltip = card.description
        if notice:
            show_warning(notice)

    def _describe_model(self, *_):
        if self._package() is not None:
            return
        name = self.model.value
        entry = next((e for e in list_models(task="stain") if e.name == name), None)
        if entry is None or entry.card is None:
            self.info.value = "No model selected." if entry is None else entry.problem
            return
        card = entry.card
        self.info.value = (f"{card.spatial_dims}D: {', '.join(card.input_channels)} → "
                           f"{', '.join(card.output_channels)}")
        self.info.tooltip = card.description

    # -- running ---------------------------------------------------------------------------
    def _region_for(self, layer, card):
        """The visible box of the current plane at the level a run predicts at (None: all)."""
        return level_view(self.viewer, layer, card, whole=self.scope.value == WHOLE).region

    def _check_settings(self, *_) -> list[str]:
        """Run is enabled only with settings that can run; the first problem is its tooltip."""
        problems = self.settings.problems()
        idle = self.job is None or not self.job.running
        self.run_button.enabled = idle and not problems
        self.run_button.tooltip = problems[0] if problems else ""
        return problems

    def run(self, *_):
        if self.job is not None and self.job.running:
            return
        name, model_name = self.input.value, self._model_key()
        if name is None or name not in self.viewer.layers:
            show_warning("Choose an input image layer first.")
            return
        if model_name is None:
            show_warning("No virtual staining model is installed; train one in the Fine-tune dock.")
            return
        layer = self.viewer.layers[name]
        problems = self._check_settings()
        if problems:
            show_warning(problems[0])
            return
        try:
            card = model_card(model_name)
            view = level_view(self.viewer, layer, card, whole=self.scope.value == WHOLE)
            level, region = view.level, view.region
            self._level_note = view.note
            view_cache = self._view_cache_for(layer, card, model_name, level)
        except Exception as err:  # user errors become notifications, not tracebacks
            report_error(err, "Virtual staining")
            return
        # Whole-image normalisation statistics, computed once per layer data and model (from a
        # low-resolution level of a pyramid), shared by every level: panning in "follow the view"
        # mode then costs only the network.
        stats_key = (id(layer.data), model_name)
        stats = self._stats.get(stats_key)
        self._run_context = (layer, card, stats_key, level, view)
        snapshot = StainSettings(**asdict(self.settings))  # the worker's own copy: the user may change the dock
        try:
            snapshot.save(settings_file("stain"))
        except OSError:  # remembering is a convenience, never a reason not to run
            pass
        progressive = view_cache is not None and region is not None and self.scope.value == CURRENT_VIEW
        data = layer_levels(layer)[level]
        self._filling = (region, view_cache, layout_for(data, card, layer.rgb, layer.name)) if progressive else None
        self.job = Job(_predict, snapshot, layer_levels(layer), level, layer.rgb, layer.name, region, stats, view_cache,
                       self.parts if progressive else None, on_result=self._on_result, on_done=self._on_done,
                       action="Virtual staining", relay=self.relay, inputs=(layer,))
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self._started = time.perf_counter()
        self.launch(self.job)

    def _view_cache_for(self, layer, card, model_name, level: int) -> ViewCache | None:
        """The predicted pixels of this layer's ``level`` with this model and settings (new caches when any changed)."""
        # TTA changes every pixel: cached plain pixels must never fill a TTA view, or the reverse.
        key = (id(layer.data), model_name, self.settings.device, self.settings.precision, self.settings.tta)
        if self._view_cache is None or self._view_cache[0] != key:
            self._view_cache = (key, LevelViewCaches(card.n_out))
        data = layer_levels(layer)[level]
        spatial = layout_for(data, card, layer.rgb, layer.name).spatial_shape(tuple(data.shape))
        return self._view_cache[1].for_level(level, spatial)

    def _show(self, data, card, region, layout) -> None:
        layer, _, _, level, view = self._run_context
        axes = spatial_axes(layer, len(region.start), None if layout.rgb else layout.channel_axis)
        limits = None if card.output_activation == "none" else [(0.0, 1.0)] * len(card.output_channels)
        tuples = overlay_tuples(data, list(card.output_channels), layer.name, view.place(layer, axes, region.start),
                                metadata={"model": card.name, "pyramid_level": level}, contrast=limits)
        publish(self.viewer, view.pyramids(layer, tuples, region.start))

    def _on_part(self):
        """A block of the current view is done: show the view as far as it is known (the rest stays 0)."""
        if self._filling is None or self.job is None or not self.job.running:
            return
        region, cache, layout = self._filling
        if cache.values is not None:
            self._show(cache.values[(slice(None),) + region.slices].copy(), self._run_context[1], region, layout)

    def _on_result(self, result):
        layer, _, stats_key, level, _ = self._run_context
        self._filling = None
        self._stats = {stats_key: result.stats}
        self._show(result.data, result.card, result.region, result.layout)
        if result.nan_fraction > 0:
            show_warning(f"{result.nan_fraction:.1%} of the input pixels were NaN or infinite; they were treated as 0.")
        for warning in result.warnings + ([self._level_note] if self._level_note else []):
            show_warning(warning)  # flat channels, thin overlaps, a pyramid off the model's scale: said, never silent
        size = "x".join(str(n) for n in result.region.shape)
        at = f" at level {level}" if layer.multiscale else ""
        self.info.value = (f"{result.card.name}: {len(result.channels)} channels, {size} px{at} "
                           f"in {time.perf_counter() - self._started:.2f} s")

    def _on_done(self):
        self.cancel_button.enabled = False
        self._check_settings()

    def _view_changed(self, *_):
        if self.live.value and self.scope.value == CURRENT_VIEW:
            self._live_timer.start()

    def _live_tick(self):
        if self.job is None or not self.job.running:
            self.run()
