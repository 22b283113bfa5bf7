"""The Preprocess dock: tile-shadow correction, flat-field correction, focus selection, normalisation.

Thin by design: each section is a view of one workflow settings object
(``workflows.preprocess``, the same the ``tile-shadow``, ``flatfield``, ``focus`` and
``normalise`` commands build, remembered between launches of napari); its button runs the
workflow in a worker thread and the result becomes NEW layers named "<input> · <what>" placed
over the input with all of its transform (``geometry.placement``: scale, translate, rotate,
shear, affine). A button is disabled while its settings cannot run, with
the reason as its tooltip. The input layer is never modified. Outputs do not carry
``source_layer`` metadata, so the other docks offer them as inputs (preprocessing comes
before staining).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox,
)
from napari.layers import Image, Points
from qtpy.QtWidgets import QGroupBox, QVBoxLayout, QWidget

from ..errors import Cancelled, InputError, VirtualStainError
from ..workflows import preprocess as workflow
from ..workflows.preprocess import FlatFieldSettings, FocusSettings, NormaliseSettings, TileShadowSettings
from ..workflows.settings_files import settings_file
from ._output_layers import publish
from .geometry import placement
from ._plot import LinePlot
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_warning

AUTO_TILES = "emptiest tiles (automatic)"
SETTINGS = {"tile-shadow": TileShadowSettings, "flatfield": FlatFieldSettings, "focus": FocusSettings,
            "normalise": NormaliseSettings}


def _settings_file(kind: str):
    return settings_file(f"preprocess-{kind}")


class PreprocessWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self.input = ComboBox(label="input", choices=self._image_layers)
        self.settings = {kind: cls.load(_settings_file(kind)) for kind, cls in SETTINGS.items()}
        tile, flat, focus, norm = (self.settings[k] for k in SETTINGS)

        self.tile = SpinBox(label="tile size (px)", value=max(2, int(tile.tile[0])), min=2, max=100000)
        self.tile_source = ComboBox(label="artifact from", choices=self._tile_sources)
        self.n_empty = SpinBox(label="tiles to average", value=tile.n_empty or 0, min=0, max=100000,
                               tooltip="0 = the emptiest 10 % of the complete tiles")
        self.criterion = ComboBox(label="empty means", choices=["flat", "dark", "bright"], value=tile.criterion,
                                  tooltip="flat: least variation; dark: lowest mean; bright: highest mean")
        self.remove_background = CheckBox(text="also remove the background level (paper 000)",
                                          value=tile.remove_background)
        self.strict = CheckBox(text="refuse a tile size that does not divide the image", value=tile.strict)
        self.tile_run = PushButton(text="Correct tile shadow")

        self.sigma = FloatSpinBox(label="sigma (px)", value=flat.sigma, min=0.5, max=10000.0, step=1.0)
        self.mode = ComboBox(label="mode", choices=["divide", "subtract"], value=flat.mode)
        self.method = ComboBox(label="background", choices=["gaussian", "opening"], value=flat.method)
        self.flat_run = PushButton(text="Correct flat field")

        self.keep = SpinBox(label="keep N best planes", value=focus.keep or 0, min=0, max=100000,
                            tooltip="0 = use the minimum score instead")
        self.min_score = FloatSpinBox(label="or PLLS at least", value=-2.0 if focus.min_score is None else focus.min_score,
                                      min=-100.0, max=100.0, step=0.1)
        self.sharper = ComboBox(label="sharper is", choices=["higher", "lower"], value=focus.sharper,
                                tooltip="higher: blur steepens the slope (usual); lower: noisy stacks (paper 002)")
        self.focus_run = PushButton(text="Score planes and keep the best")
        self.plot = LinePlot("focus of each plane", x_label="plane", y_label="PLLS")

        self.low = FloatSpinBox(label="low percentile", value=norm.low, min=0.0, max=100.0, step=0.1)
        self.high = FloatSpinBox(label="high percentile", value=norm.high, min=0.0, max=100.0, step=0.1)
        self.clip = CheckBox(text="clip to [0, 1]", value=norm.clip)
        self.norm_run = PushButton(text="Normalise")
        self.buttons = {"tile-shadow": self.tile_run, "flatfield": self.flat_run, "focus": self.focus_run,
                        "normalise": self.norm_run}

        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.run_state_label = Label(value="state: ready")
        self.info = Label(value="")

        layout = QVBoxLayout(self)
        layout.addWidget(Container(widgets=[self.input]).native)
        self._section(layout, "Tile shadow (stitched mosaics)", [
            self.tile, self.tile_source, self.n_empty, self.criterion, self.remove_background,
            self.strict, self.tile_run])
        self._section(layout, "Flat field (untiled images)", [self.sigma, self.mode, self.method, self.flat_run])
        focus_box = self._section(layout, "Focus (z-stacks)", [self.keep, self.min_score, self.sharper,
                                                               self.focus_run])
        focus_box.layout().addWidget(self.plot)
        self._section(layout, "Percentile normalisation", [self.low, self.high, self.clip, self.norm_run])
        layout.addWidget(Container(widgets=[self.cancel_button, self.progress, self.run_state_label, self.info]).native)
        layout.addStretch()

        self.tile_run.changed.connect(self.run_tile_shadow)
        self.flat_run.changed.connect(self.run_flatfield)
        self.focus_run.changed.connect(self.run_focus)
        self.norm_run.changed.connect(self.run_normalise)
        self.cancel_button.changed.connect(self.cancel)
        self.relay.progressed.connect(self._on_progress)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.moved):
            event.connect(self.reset_choices)
        self._bind()

    def _bind(self) -> None:
        """Each field writes its settings value; the settings' events re-check which buttons can run."""
        s = self.settings
        fields = [
            ("tile-shadow", "tile", (self.tile,), lambda: (int(self.tile.value),)),
            ("tile-shadow", "n_empty", (self.n_empty,), lambda: int(self.n_empty.value) or None),
            ("tile-shadow", "criterion", (self.criterion,), lambda: self.criterion.value),
            ("tile-shadow", "remove_background", (self.remove_background,), lambda: bool(self.remove_background.value)),
            ("tile-shadow", "strict", (self.strict,), lambda: bool(self.strict.value)),
            ("flatfield", "sigma", (self.sigma,), lambda: float(self.sigma.value)),
            ("flatfield", "mode", (self.mode,), lambda: self.mode.value),
            ("flatfield", "method", (self.method,), lambda: self.method.value),
            ("focus", "keep", (self.keep,), lambda: int(self.keep.value) or None),
            ("focus", "min_score", (self.keep, self.min_score),
             lambda: None if self.keep.value else float(self.min_score.value)),
            ("focus", "sharper", (self.sharper,), lambda: self.sharper.value),
            ("normalise", "low", (self.low,), lambda: float(self.low.value)),
            ("normalise", "high", (self.high,), lambda: float(self.high.value)),
            ("normalise", "clip", (self.clip,), lambda: bool(self.clip.value)),
        ]
        for kind, name, widgets, value in fields:
            setattr(s[kind], name, value())
            for widget in widgets:
                widget.changed.connect(lambda *_, kind=kind, name=name, value=value: setattr(s[kind], name, value()))
        for settings in s.values():
            settings.events.connect(self._check_settings)
        self._check_settings()

    def _check_settings(self, *_) -> None:
        """A button is enabled only while nothing runs and its settings can run; the problem is its tooltip."""
        idle = self.job is None or not self.job.running
        for kind, button in self.buttons.items():
            problems = self.settings[kind].problems()
            button.enabled = idle and not problems
            button.tooltip = problems[0] if problems else ""

    @staticmethod
    def _section(layout, title, widgets) -> QGroupBox:
        box = QGroupBox(title)
        inner = QVBoxLayout(box)
        inner.addWidget(Container(widgets=widgets).native)
        layout.addWidget(box)
        return box

    # -- choices -------------------------------------------------------------------------------
    def _image_layers(self, *_):
        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def _tile_sources(self, *_):
        return [AUTO_TILES] + [f"tiles under points: {layer.name}" for layer in self.viewer.layers
                               if isinstance(layer, Points)]

    def reset_choices(self, *_):
        self.input.reset_choices()
        self.tile_source.reset_choices()

    # -- actions -------------------------------------------------------------------------------
    def run_tile_shadow(self, *_):
        layer = self._input_layer()
        if layer is None:
            return
        try:
            tiles = self._tiles_under_points(layer)
        except InputError as err:
            report_error(err, "Tile-shadow correction")
            return
        self._start(layer, "tile-shadow", tiles=tuple(tiles) if tiles else None)

    def run_flatfield(self, *_):
        layer = self._input_layer()
        if layer is not None:
            self._start(layer, "flatfield")

    def run_focus(self, *_):
        layer = self._input_layer()
        if layer is not None:
            self._start(layer, "focus")

    def run_normalise(self, *_):
        layer = self._input_layer()
        if layer is not None:
            self._start(layer, "normalise")

    # -- plumbing ------------------------------------------------------------------------------
    def _input_layer(self):
        if self.job is not None and self.job.running:
            show_warning("A preprocessing run is still going: wait for it or cancel it.")
            return None
        name = self.input.value
        if name is None or name not in self.viewer.layers:
            show_warning("Choose an input image layer first.")
            return None
        layer = self.viewer.layers[name]
        if layer.multiscale:
            self._refused("Preprocessing", f"'{name}' is a multiscale (pyramid) layer: preprocessing needs one "
                                           "resolution level, opened as its own layer.")
            return None
        return layer

    def _refused(self, action, sentence) -> bool:
        """Show why ``action`` cannot start (if ``sentence``) in a notification and the status line."""
        if sentence:
            report_error(InputError(sentence), action)
            self.info.value = f"{action} not started: {sentence}"
        return bool(sentence)

    def _tiles_under_points(self, layer):
        """Grid (row, column) of the tiles under the chosen Points layer's points, or None (automatic)."""
        source = self.tile_source.value
        if source in (None, AUTO_TILES):
            return None
        points = self.viewer.layers[source.split(": ", 1)[1]]
        tile = self.tile.value
        tiles = []
        for point in points.data:
            # world coordinates link the two layers; an RGB layer's data coordinates exclude its colour axis
            y, x = np.asarray(layer.world_to_data(points.data_to_world(point)))[-2:]
            tiles.append((int(y // tile), int(x // tile)))
        if not tiles:
            raise InputError(f"The points layer '{points.name}' has no points: put one on each empty tile.")
        return sorted(set(tiles))

    def _start(self, layer, kind, **overrides):
        settings = self.settings[kind].copy()  # the worker's own copy: the user may change the dock
        try:
            settings.save(_settings_file(kind))
        except OSError:  # remembering is a convenience, never a reason not to run
            pass
        for name, value in overrides.items():  # this run only (tiles picked with points)
            setattr(settings, name, value)
        action = settings.action
        axes = workflow.layer_axes(layer.data.ndim, layer.rgb)
        problems = settings.problems() + [workflow.input_problem(settings, tuple(layer.data.shape), axes, layer.name)]
        problems = [p for p in problems if p]
        if self._refused(action, problems[0] if problems else None):
            return
        self._context = (layer, action)
        self.job = Job(workflow.run, settings, layer.data, axes, name=layer.name, on_result=self._on_result,
                       on_done=self._on_done, action=action, relay=self.relay, on_error=self._on_error,
                       inputs=(layer,))
        for button in self.buttons.values():
            button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.info.value = f"{action} of '{layer.name}'…"
        self.launch(self.job)

    def _on_result(self, result):
        layer, action = self._context
        axes = tuple(range(layer.ndim))  # every axis of the layer: outputs keep its grid and transform
        publish(self.viewer, result.layer_tuples(layer.name, place=lambda start: placement(layer, axes, start)))
        for warning in result.warnings:
            show_warning(warning)
        info = result.info
        if "plls" in info:
            self.plot.set_series("PLLS", list(enumerate(info["plls"])), symbol="o")
            self.plot.set_highlight("PLLS", info["kept_planes"])
            self.plot.setToolTip("\n".join(f"plane {z}: PLLS {v:.3f}{' (kept)' if z in info['kept_planes'] else ''}"
                                           for z, v in enumerate(info["plls"])))
        self.info.value = f"{action} of '{layer.name}' done" + (
            f": kept planes {', '.join(map(str, info['kept_planes']))}" if "kept_planes" in info else
            f": averaged {len(info['tiles'])} tile(s)" if "tiles" in info else ".")

    def _on_error(self, err):
        layer, action = self._context
        why = ("cancelled." if isinstance(err, Cancelled) else f"failed: {err}" if isinstance(err, VirtualStainError)
               else "failed unexpectedly.")
        self.info.value = f"{action} of '{layer.name}' {why}"

    def _on_done(self):
        if self.info.value.endswith("…"):  # neither a result nor an error came back: the run was dropped
            layer, action = self._context
            self.info.value = f"{action} of '{layer.name}' stopped; nothing was added."
        self.cancel_button.enabled = False
        self._check_settings()
