"""The MAXIM dock: impute a marker, QC every stain, attribute, evaluate per cell, train imputers.

Markers come either as one grey layer per marker (what the reader's channel axis gives;
default: every 2D grey layer of the same shape) or as one channels-first (C, Y, X) layer
whose ``metadata["channel_names"]`` names the markers. The imputers are a folder's
joint imputer (``joint-imputer.pt``, trained here) or older ``imputer-<marker>.pt`` files. Every action runs a core function in a worker
(tasks.maxim*, training.imputers) and turns its result into layers, a table or bars.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton,
                              RadioButtons, Select, SpinBox)
from napari.layers import Image, Labels
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..errors import InputError
from ..tasks.layers import overlay_tuples
from ..tasks.maxim import check_marker_stack, find_imputers, impute_marker, load_imputer, stack_from_channels
from ._output_layers import publish
from .geometry import placement, spatial_axes, visible_region
from ._worker import JobDockMixin, Job, ProgressRelay, show_info, show_warning

SEPARATE = "one layer per marker"
CURRENT_VIEW = "current view"
WHOLE = "whole image"
QC_COLUMNS = ["marker", "class", "where (y, x)", "evidence"]


# ---- worker bodies (no Qt) ------------------------------------------------------------------

def _impute(folder, stack_parts, target, region, device, progress=None, cancel=None):
    stack, names = stack_parts()
    model, card = load_imputer(folder, target)
    return impute_marker(model, card, stack, names, region=region, device=device, progress=progress, cancel=cancel)


def _qc(folder, stack_parts, region, device, progress=None, cancel=None):
    """Training-free checks always; the imputation check too when a folder of imputers is chosen.
    Imputer files that do not load are named in the report's warnings."""
    from ..errors import CheckpointError
    from ..tasks.maxim import load_imputers
    from ..tasks.maxim_qc import run_qc

    stack, names = stack_parts()
    problems: list[str] = []
    imputers = {}
    if folder not in ("", ".") and any(Path(folder).glob("*.pt")):
        try:
            imputers = load_imputers(folder, problems)
        except CheckpointError as err:
            if not problems:
                raise
            problems.append(f"no imputer could be used ({err}); only the training-free checks ran")
    report = run_qc(stack, names, imputers, region=region, device=device, progress=progress, cancel=cancel)
    report.warnings[:0] = problems
    return report


def _attribute(folder, stack_parts, target, region, progress=None, cancel=None):
    from ..tasks.maxim_attribution import attribute_marker

    stack, names = stack_parts()
    model, card = load_imputer(folder, target)
    return attribute_marker(model, card, stack, names, region=region, progress=progress, cancel=cancel)


def _cells(folder, stack_parts, target, labels, expand, threshold, device, progress=None, cancel=None):
    from ..tasks.maxim_cells import score_imputer_on_cells

    stack, names = stack_parts()
    model, card = load_imputer(folder, target)
    return score_imputer_on_cells(model, card, stack, names, labels, expand_px=expand, threshold=threshold,
                                  device=device, progress=progress, cancel=cancel)


def _train(folder, stack_parts, minutes, steps, device, progress=None, cancel=None):
    from ..training.joint_imputer import JointImputerConfig, train_joint_imputer

    stack, names = stack_parts()
    check_marker_stack(stack, names)
    # The patch must leave room for a held-out region below it.
    patch = int(min(96, max(16, (min(stack.shape[1:]) // 2) // 16 * 16)))
    config = JointImputerConfig(minutes=minutes or None, steps=steps or None, patch=patch, device=device)
    return train_joint_imputer(stack, names, folder, config=config, progress=progress, cancel=cancel)


class MaximWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self._default_selection: list[str] = []
        self._inputs: list = []  # the layers the next run reads

        self.source = ComboBox(label="markers from", choices=self._sources)
        self.markers = Select(label="marker layers", choices=self._grey_layers)
        self.folder = FileEdit(label="imputers folder", mode="d", value="")
        self.target = ComboBox(label="target marker", choices=self._targets)
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=WHOLE)
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.labels = ComboBox(label="nuclei labels", choices=self._label_layers)
        self.expand = SpinBox(label="grow nuclei by (px)", value=0, min=0, max=50)
        self.threshold = FloatSpinBox(label="positive above (0 = Otsu)", value=0.0, min=0.0, max=1.0, step=0.01)
        self.minutes = FloatSpinBox(label="training minutes", value=4.0, min=0.0, max=10000.0)
        self.steps = SpinBox(label="or steps", value=0, min=0, max=1_000_000)
        self.buttons = {name: PushButton(text=name) for name in
                        ("Impute", "QC all markers", "Attribution", "Cell evaluation", "Train the joint imputer")}
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.info = Label(value="")
        self.bars = Container(labels=True)
        self.table = QTableWidget(0, len(QC_COLUMNS))
        self.table.setHorizontalHeaderLabels(QC_COLUMNS)
        b = self.buttons
        self.container = Container(widgets=[
            self.source, self.markers, self.folder, self.target, self.scope, self.device,
            Container(widgets=[b["Impute"], b["QC all markers"], b["Attribution"]], layout="horizontal", labels=False),
            self.labels, self.expand, self.threshold, b["Cell evaluation"],
            self.minutes, self.steps, b["Train the joint imputer"],
            self.cancel_button, self.progress, self.info, self.bars])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addWidget(self.table)
        self.table.cellClicked.connect(self.go_to_row)
        self._rows: list[dict] = []

        b["Impute"].changed.connect(self.impute)
        b["QC all markers"].changed.connect(self.qc)
        b["Attribution"].changed.connect(self.attribute)
        b["Cell evaluation"].changed.connect(self.evaluate_cells)
        b["Train the joint imputer"].changed.connect(self.train)
        self.cancel_button.changed.connect(self.cancel)
        self.relay.progressed.connect(self._on_progress)
        self.folder.changed.connect(lambda *_: self.target.reset_choices())
        self.source.changed.connect(self._source_changed)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.reset_choices)
        self._select_default_markers()

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

    def _targets(self, *_):
        try:
            return list(find_imputers(self.folder.value)) if str(self.folder.value) not in ("", ".") else []
        except Exception:
            return []

    def reset_choices(self, *_):
        for w in (self.source, self.markers, self.target, self.labels):
            w.reset_choices()
        # Follow new layers while the user has not changed the default selection.
        if not self.markers.value or list(self.markers.value) == self._default_selection:
            self._select_default_markers()

    def _source_changed(self, *_):
        self.markers.enabled = self.source.value == SEPARATE

    def _select_default_markers(self):
        """All 2D grey layers of the most common shape."""
        layers = [self.viewer.layers[n] for n in self._grey_layers()]
        if not layers:
            self._default_selection = []
            return
        shapes = [tuple(layer.data.shape) for layer in layers]
        common = max(shapes, key=shapes.count)
        self._default_selection = [layer.name for layer in layers if tuple(layer.data.shape) == common]
        self.markers.value = self._default_selection

    # -- the stack -------------------------------------------------------------------------
    def _stack_source(self):
        """(a callable returning (stack, names) for the worker, the reference layer, a name)."""
        if self.source.value == SEPARATE:
            names = list(self.markers.value)
            if not names:
                raise InputError("Choose the marker layers (at least two) first.")
            layers = self._inputs = [self.viewer.layers[n] for n in names]
            return (lambda: stack_from_channels([layer.data for layer in layers], names)), layers[0], "MAXIM"
        layer = self.viewer.layers[self.source.value]
        self._inputs = [layer]
        names = list(layer.metadata.get("channel_names") or [f"C{i}" for i in range(layer.data.shape[0])])
        return (lambda: (np.asarray(layer.data), check_marker_stack(layer.data, names))), layer, layer.name

    def _region(self, layer):
        if self.scope.value == WHOLE:
            return None
        return visible_region(self.viewer, layer, spatial_axes(layer, 2), tuple(layer.data.shape[-2:]))

    def _start(self, func, *args, on_result, action):
        if self.job is not None and self.job.running:
            show_info("Another MAXIM action is running; cancel it or wait.")
            return False
        self.job = Job(func, *args, on_result=on_result, on_done=self._on_done, action=action, relay=self.relay,
                       inputs=self._inputs)
        for button in self.buttons.values():
            button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.launch(self.job)
        return True

    def _prepare(self, need_target=True):
        try:
            parts, layer, name = self._stack_source()
            folder = str(self.folder.value)
            if need_target and not self.target.value:
                raise InputError("Choose a folder of imputers and the target marker first.")
            return parts, layer, name, folder
        except InputError as err:
            show_warning(str(err))
            return None

    # -- actions ---------------------------------------------------------------------------
    def impute(self, *_):
        prepared = self._prepare()
        if prepared:
            parts, layer, name, folder = prepared
            self._context = (layer, name)
            self._start(_impute, folder, parts, self.target.value, self._region(layer), self.device.value,
                        on_result=self._show_imputed, action="Imputation")

    def qc(self, *_):
        prepared = self._prepare(need_target=False)
        if prepared:
            parts, layer, name, folder = prepared
            self._context = (layer, name)
            self._start(_qc, folder, parts, self._region(layer), self.device.value, on_result=self._show_qc,
                        action="Stain QC")

    def attribute(self, *_):
        prepared = self._prepare()
        if prepared:
            parts, layer, _, folder = prepared
            self._start(_attribute, folder, parts, self.target.value, self._region(layer),
                        on_result=self._show_attribution, action="Attribution")

    def evaluate_cells(self, *_):
        prepared = self._prepare()
        if not prepared:
            return
        if not self.labels.value:
            show_warning("Add a nuclei label layer and choose it first.")
            return
        parts, _, _, folder = prepared
        labels = np.asarray(self.viewer.layers[self.labels.value].data)
        threshold = self.threshold.value or None
        self._start(_cells, folder, parts, self.target.value, labels, self.expand.value, threshold,
                    self.device.value, on_result=self._show_cells, action="Cell evaluation")

    def train(self, *_):
        folder = str(self.folder.value)
        if folder in ("", "."):
            show_warning("Choose the folder the imputers are written to first.")
            return
        prepared = self._prepare(need_target=False)
        if prepared:
            parts = prepared[0]
            self._start(_train, folder, parts, self.minutes.value, self.steps.value, self.device.value,
                        on_result=self._show_trained, action="Training imputers")

    # -- results ---------------------------------------------------------------------------
    def _on_done(self):
        for button in self.buttons.values():
            button.enabled = True
        self.cancel_button.enabled = False

    def _overlay(self, data, channels, start, contrast):
        layer, name = self._context
        tuples = overlay_tuples(data, channels, name, placement(layer, spatial_axes(layer, 2), start),
                                metadata={"maxim": True}, contrast=contrast)
        return publish(self.viewer, tuples)

    def _show_imputed(self, result):
        self._overlay(result.data[None], [f"{result.target} (imputed)"], result.region.start, [(0.0, 1.0)])
        self.info.value = f"{result.target} imputed over {result.region.shape[0]}x{result.region.shape[1]} pixels."

    def _show_qc(self, report):
        self.last_report = report
        self._rows = report.rows()
        self.table.setRowCount(len(self._rows))
        for row, finding in enumerate(self._rows):
            where = (f"{finding['start']} - {finding['stop']}" if "start" in finding else "whole channel")
            evidence = ", ".join(f"{k} {v}" for k, v in finding["evidence"].items() if not isinstance(v, dict))
            for col, value in enumerate([finding["marker"], finding["class"], where, evidence]):
                item = QTableWidgetItem(str(value))
                item.setToolTip(finding["sentence"])
                self.table.setItem(row, col, item)
        markers = [m for m, q in report.markers.items() if q.disagreement is not None]
        if markers:
            maps = np.stack([report.markers[m].disagreement for m in markers])
            self._overlay(maps, [f"QC disagreement {m}" for m in markers], report.region.start,
                          [(0.0, max(0.5, report.settings.region_floor * 2))] * len(markers))
        self._show_boxes(report)
        flagged = report.flagged
        unjudged = [m for m, c in report.checks.items() if not c.assessable]
        self.info.value = (f"Flagged: {', '.join(flagged)}." if flagged else "No stain flagged.") + (
            f" Not assessable: {', '.join(unjudged)}." if unjudged else "")
        for warning in report.warnings:
            show_warning(warning)

    def _show_boxes(self, report):
        layer, name = self._context
        boxes = [f for f in self._rows if "start" in f]
        shapes_name = f"{name} · QC flagged regions"
        if shapes_name in self.viewer.layers:
            self.viewer.layers.remove(shapes_name)
        if not boxes:
            return
        rects = [np.array([f["start"], f["stop"]], dtype=float) for f in boxes]
        self.viewer.add_shapes(rects, shape_type="rectangle", name=shapes_name, edge_color="yellow",
                               face_color="transparent", edge_width=2, scale=list(layer.scale)[-2:],
                               translate=list(layer.translate)[-2:],
                               features={"marker": [f["marker"] for f in boxes], "class": [f["class"] for f in boxes]},
                               text={"string": "{marker} {class}", "color": "yellow", "size": 8},
                               metadata={"maxim": True})

    def go_to_row(self, row: int, *_):
        """Centre the camera on the finding of this table row (its box, or the whole channel)."""
        if not 0 <= row < len(self._rows):
            return
        layer, _ = self._context
        finding = self._rows[row]
        scale, translate = np.asarray(layer.scale)[-2:], np.asarray(layer.translate)[-2:]
        if "start" in finding:
            start, stop = np.asarray(finding["start"], float), np.asarray(finding["stop"], float)
        else:
            start, stop = np.zeros(2), np.asarray(layer.data.shape[-2:], float)
        centre = translate + scale * (start + stop) / 2
        self.viewer.camera.center = tuple(centre)
        extent = float(np.max(scale * (stop - start))) or 1.0
        self.viewer.camera.zoom = 400.0 / extent  # about 400 screen pixels across the box
        marker_layer = finding["marker"]
        if marker_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[marker_layer]

    def _show_attribution(self, result):
        self.last_attribution = result
        self.bars.clear()
        for marker, share in sorted(result.percent.items(), key=lambda kv: -kv[1]):
            bar = ProgressBar(value=int(round(share)), min=0, max=100, label=marker)
            bar.tooltip = f"{marker}: {share:.1f}% of the total |attribution| to {result.target}"
            self.bars.append(bar)
        self.info.value = f"Input markers driving {result.target} (integrated gradients, % of total):"

    def _show_cells(self, result):
        self.last_cells = result
        base = result.baselines.get("BL-Mean", {})
        self.info.value = (f"{result.n_cells} cells, {result.n_positive} positive (above {result.threshold:.3f}); "
                           f"cell MAE {result.mae:.4f} (BL-Mean {base.get('mae', float('nan')):.4f}); "
                           f"AP {result.average_precision:.3f} (BL-Mean {base.get('average_precision', float('nan')):.3f})")

    def _show_trained(self, result):
        self.target.reset_choices()
        counted = [m for m, v in result.per_marker.items() if v.get("counts")]
        lines = [f"{m}: MAE {v['imputer']['mae']:.3f} (BL-Mean {v['bl_mean']['mae']:.3f})"
                 for m, v in result.per_marker.items() if "imputer" in v]
        self.info.value = (f"Joint imputer, {result.steps} steps; imputation check counts for "
                           f"{', '.join(counted) or 'no marker'}. Held out: " + "; ".join(lines))
        show_info(f"Joint imputer written to {result.path}.")
