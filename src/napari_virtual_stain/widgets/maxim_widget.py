"""The MAXIM dock: impute a marker, QC every stain, attribute, evaluate per cell, train imputers.

A view of :class:`~napari_virtual_stain.workflows.maxim.MaximSettings` (the object the
``impute``, ``qc``, ``cell-scores`` and ``train-imputers`` commands build): each action's
button is enabled only when the settings and the chosen markers can run it, the first
reason why not is its tooltip, and the settings are remembered between launches of napari.
Markers come either as one grey layer per marker (what the reader's channel axis gives;
default: every 2D grey layer of the same shape) or as one channels-first (C, Y, X) layer
whose ``metadata["channel_names"]`` names the markers. Every action is a workflow function
run in a worker; ``workflows.maxim_results`` turns its result into layers, a table or bars.

Multiscale (pyramid) marker layers are read at one level (``widgets.geometry.level_view_over``):
the current view at the level napari displays, the whole image at the level chosen; only the
view's pixels are read (``workflows.lazy_markers``), and the maps come back as pyramids over
the input's coarser levels, placed over it. Cell evaluation and training use the full resolution.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import (ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton,
                              RadioButtons, Select, SpinBox)
from napari.layers import Image, Labels
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..errors import InputError
from ..workflows import maxim as workflow
from ..workflows import maxim_results as shown
from ..workflows.maxim import ATTRIBUTION, CELLS, IMPUTE, QC, TRAIN, MarkerInput, MaximSettings
from ..workflows.settings_files import settings_file
from ._output_layers import publish
from ..workflows.lazy_markers import LazyMarkers
from ._levels import chosen_level, level_choices
from .geometry import layer_levels, level_view_over, spatial_axes
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_info, show_warning

SEPARATE = "one layer per marker"
CURRENT_VIEW = "current view"
WHOLE = "whole image"
QC_COLUMNS = shown.QC_COLUMNS
BUTTONS = {IMPUTE: "Impute", QC: "QC all markers", ATTRIBUTION: "Attribution", CELLS: "Cell evaluation",
           TRAIN: "Train the joint imputer"}


class MaximWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self._default_selection: list[str] = []
        self._inputs: list = []  # the layers the next run reads
        self._rows: list[dict] = []
        self.settings = st = MaximSettings.load(settings_file("maxim"))

        self.source = ComboBox(label="markers from", choices=self._sources)
        self.markers = Select(label="marker layers", choices=self._grey_layers)
        self.folder = FileEdit(label="imputers folder", mode="d", value=st.folder)
        self.target = ComboBox(label="target marker", choices=self._targets)
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=WHOLE)
        self.level = ComboBox(label="whole-image level", choices=self._levels,
                              tooltip="for pyramid layers: the level a whole-image run reads (auto: the full "
                                      "resolution); a current view runs at the level on screen")
        devices = available_devices()
        self.device = ComboBox(label="device", choices=devices, value=st.device if st.device in devices else "auto")
        self.labels = ComboBox(label="nuclei labels", choices=self._label_layers)
        self.expand = SpinBox(label="grow nuclei by (px)", value=min(max(st.expand, 0), 50), min=0, max=50)
        self.threshold = FloatSpinBox(label="positive above (0 = Otsu)", value=min(max(st.threshold or 0.0, 0.0), 1.0),
                                      min=0.0, max=1.0, step=0.01)
        self.minutes = FloatSpinBox(label="training minutes", value=st.minutes or 0.0, min=0.0, max=10000.0)
        self.steps = SpinBox(label="or steps", value=min(st.steps or 0, 1_000_000), min=0, max=1_000_000)
        self.buttons = {action: PushButton(text=text) for action, text in BUTTONS.items()}
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.run_state_label = Label(value="state: ready")
        self.info = Label(value="")
        self.bars = Container(labels=True)
        self.table = QTableWidget(0, len(QC_COLUMNS))
        self.table.setHorizontalHeaderLabels(QC_COLUMNS)
        b = self.buttons
        self.container = Container(widgets=[
            self.source, self.markers, self.folder, self.target, self.scope, self.level, self.device,
            Container(widgets=[b[IMPUTE], b[QC], b[ATTRIBUTION]], layout="horizontal", labels=False),
            self.labels, self.expand, self.threshold, b[CELLS], self.minutes, self.steps, b[TRAIN],
            self.cancel_button, self.progress, self.run_state_label, self.info, self.bars])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addWidget(self.table)
        self.table.cellClicked.connect(self.go_to_row)

        if st.marker in self.target.choices:
            self.target.value = st.marker
        for action, method in ((IMPUTE, self.impute), (QC, self.qc), (ATTRIBUTION, self.attribute),
                               (CELLS, self.evaluate_cells), (TRAIN, self.train)):
            b[action].changed.connect(method)
        self.cancel_button.changed.connect(self.cancel)
        self.relay.progressed.connect(self._on_progress)
        self.folder.changed.connect(lambda *_: self.target.reset_choices())
        self.source.changed.connect(self._source_changed)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.reset_choices)
        self._select_default_markers()
        self._bind()
        for chooser in (self.source, self.markers, self.labels):
            chooser.changed.connect(self._check_settings)
        for chooser in (self.source, self.markers):  # the levels offered are the first marker layer's
            chooser.changed.connect(lambda *_: self.level.reset_choices())
        self._check_settings()

    def _bind(self) -> None:
        """Each field writes its settings value; the settings' events re-check which action can run."""
        st = self.settings
        writers = {"folder": (self.folder, lambda v: str(v or "")), "marker": (self.target, lambda v: v),
                   "device": (self.device, lambda v: v), "expand": (self.expand, int),
                   "threshold": (self.threshold, lambda v: float(v) or None),
                   "minutes": (self.minutes, lambda v: float(v) or None), "steps": (self.steps, lambda v: int(v) or None)}
        for name, (widget, convert) in writers.items():
            setattr(st, name, convert(widget.value))
            widget.changed.connect(lambda value, name=name, convert=convert: setattr(st, name, convert(value)))
        st.events.connect(self._check_settings)

    def _marker_layers(self) -> list:
        if self.source.value not in self.viewer.layers:  # one layer per marker
            return [self.viewer.layers[n] for n in self.markers.value if n in self.viewer.layers]
        return [self.viewer.layers[self.source.value]]

    def _marker_input(self, level: int = 0, lazy: bool = False) -> MarkerInput:
        """The markers the next run reads at pyramid ``level`` (and the layers it keeps an eye on);
        ``lazy``: read by the action, region only (imputation, attribution, QC)."""
        kind = LazyMarkers if lazy else MarkerInput
        self._inputs = layers = self._marker_layers()
        at = [layer_levels(layer)[min(level, len(layer_levels(layer)) - 1)] for layer in layers]
        if self.source.value not in self.viewer.layers:
            return kind.from_planes(at, [layer.name for layer in layers])
        return kind.from_stack(at[0], layers[0].metadata.get("channel_names"))

    def _selection_problems(self, action: str) -> list[str]:
        found = [] if action != CELLS or self.labels.value else ["Add a nuclei label layer and choose it first."]
        return found + self.settings.problems(action)

    def _check_settings(self, *_) -> dict[str, list[str]]:
        """Each action's button is enabled only when it can run; the first problem is its tooltip."""
        idle = self.job is None or not self.job.running
        markers = self._marker_input().problems()
        found = {}
        for action, button in self.buttons.items():
            found[action] = problems = markers + self._selection_problems(action)
            button.enabled = idle and not problems
            button.tooltip = problems[0] if problems else ""
        return found

    # -- choices ---------------------------------------------------------------------------
    def _own(self, layer) -> bool:
        return "source_layer" in layer.metadata or "maxim" in layer.metadata

    def _grey_layers(self, *_):
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.rgb and layer.ndim == 2 and not self._own(layer)]

    def _sources(self, *_):
        return [SEPARATE] + [layer.name for layer in self.viewer.layers
                             if isinstance(layer, Image) and not layer.rgb and layer.ndim == 3 and not self._own(layer)]

    def _label_layers(self, *_):
        return [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _levels(self, *_):
        layers = self._marker_layers() if hasattr(self, "markers") else []
        return level_choices(layers[0] if layers else None)

    def _targets(self, *_):
        return workflow.imputer_markers(str(self.folder.value))

    def reset_choices(self, *_):
        for w in (self.source, self.markers, self.target, self.labels, self.level):
            w.reset_choices()
        # Follow new layers while the user has not changed the default selection.
        if not self.markers.value or list(self.markers.value) == self._default_selection:
            self._select_default_markers()
        self._check_settings()

    def _source_changed(self, *_):
        self.markers.enabled = self.source.value == SEPARATE

    def _select_default_markers(self):
        names = self._grey_layers()
        self._default_selection = shown.default_markers({n: tuple(self.viewer.layers[n].data.shape) for n in names})
        if self._default_selection:
            self.markers.value = self._default_selection

    # -- actions ---------------------------------------------------------------------------
    def _start(self, action: str, func, *args, on_result, reference: bool = True, **kwargs) -> bool:
        if self.job is not None and self.job.running:
            show_info("Another MAXIM action is running; cancel it or wait.")
            return False
        problems = self._selection_problems(action)
        if problems:  # said at once; what is wrong with the markers is said by the run itself
            report_error(InputError(problems[0]), action)
            return False
        level = 0
        layers = self._marker_layers() if reference else []
        if layers:
            layer = layers[0]
            try:
                view = level_view_over(self.viewer, layer, spatial_axes(layer, 2), lambda d: tuple(d.shape[-2:]),
                                       whole=self.scope.value == WHOLE, level=chosen_level(self.level.value))
            except Exception as err:  # grid mode, a layer out of view: a sentence
                report_error(err, action)
                return False
            level = view.level
            self._context = (layer, layer.name if self.source.value in self.viewer.layers else "MAXIM", view)
            if self.scope.value == CURRENT_VIEW:
                kwargs["region"] = view.region
        markers = self._marker_input(level, lazy=bool(layers))
        self.job = Job(func, self.settings.remember("maxim"), markers, *args, on_result=on_result,
                       on_done=self._on_done, action=action, relay=self.relay, inputs=self._inputs, **kwargs)
        for button in self.buttons.values():
            button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.launch(self.job)
        return True

    def impute(self, *_):
        self._start(IMPUTE, workflow.impute, on_result=self._show_imputed)

    def qc(self, *_):
        self._start(QC, workflow.qc, on_result=self._show_qc)

    def attribute(self, *_):
        self._start(ATTRIBUTION, workflow.attribute, on_result=self._show_attribution)

    def evaluate_cells(self, *_):
        labels = self.viewer.layers[self.labels.value].data if self.labels.value in self.viewer.layers else None
        self._start(CELLS, workflow.evaluate_cells, labels, on_result=self._show_cells, reference=False)

    def train(self, *_):
        self._start(TRAIN, workflow.train, on_result=self._show_trained, reference=False)

    # -- results ---------------------------------------------------------------------------
    def _on_done(self):
        self.cancel_button.enabled = False
        self._check_settings()

    def _place(self, start) -> dict:
        layer, _, view = self._context
        return view.place(layer, spatial_axes(layer, 2), start)

    def _pyramids(self, tuples, start) -> list:
        layer, _, view = self._context
        return view.pyramids(layer, tuples, start)

    def _show_imputed(self, result):
        tuples = shown.imputed_tuples(result, self._context[1], self._place(result.region.start))
        publish(self.viewer, self._pyramids(tuples, result.region.start))
        self.info.value = shown.describe_imputed(result)

    def _show_qc(self, report):
        self.last_report = report
        self._rows = report.rows()
        rows = shown.qc_table(report)
        self.table.setRowCount(len(rows))
        for row, (cells, sentence) in enumerate(rows):
            for col, value in enumerate(cells):
                item = QTableWidgetItem(value)
                item.setToolTip(sentence)
                self.table.setItem(row, col, item)
        name = self._context[1]
        tuples = self._pyramids(shown.qc_tuples(report, name, self._place(report.region.start), self._place((0, 0))),
                                report.region.start)
        boxes = shown.boxes_name(name)
        if boxes in self.viewer.layers and all(t[1]["name"] != boxes for t in tuples):
            self.viewer.layers.remove(boxes)  # nothing flagged in a region any more
        publish(self.viewer, tuples)
        self.info.value = shown.describe_qc(report)
        for warning in report.warnings:
            show_warning(warning)

    def go_to_row(self, row: int, *_):
        """Centre the camera on the finding of this table row (its box, or the whole channel)."""
        if not 0 <= row < len(self._rows):
            return
        layer, _, view = self._context
        finding = self._rows[row]
        scale, translate = np.asarray(layer.scale)[-2:], np.asarray(layer.translate)[-2:]
        start, stop = shown.finding_box(finding, layer_levels(layer)[view.level].shape)
        # the finding is in the run's level pixels; napari's data coordinates are the full resolution's
        start, stop = start * view.downsample[-2:], stop * view.downsample[-2:]
        self.viewer.camera.center = tuple(translate + scale * (start + stop) / 2)
        extent = float(np.max(scale * (stop - start))) or 1.0
        self.viewer.camera.zoom = 400.0 / extent  # about 400 screen pixels across the box
        if finding["marker"] in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[finding["marker"]]

    def _show_attribution(self, result):
        self.last_attribution = result
        self.bars.clear()
        for marker, share, tooltip in shown.attribution_bars(result):
            bar = ProgressBar(value=share, min=0, max=100, label=marker)
            bar.tooltip = tooltip
            self.bars.append(bar)
        self.info.value = shown.describe_attribution(result)

    def _show_cells(self, result):
        self.last_cells = result
        self.info.value = shown.describe_cells(result)

    def _show_trained(self, result):
        self.target.reset_choices()
        self.info.value = shown.describe_trained(result)
        show_info(f"Joint imputer written to {result.path}.")
