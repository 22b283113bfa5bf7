"""The DeepLIIF dock: IHC -> modalities and classified cells, with live thresholds and hand corrections.

The networks run once (in a worker, with progress and Cancel); everything after that is
post-processing on the stored maps: moving the size or marker slider reclassifies from
the per-cell table (microseconds), moving the segmentation slider relabels the stored
segmentation (no network), and clicking a cell flips it (Shift-click excludes it). The
counts are shown in the dock and kept in the cell layer's metadata.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, RadioButtons,
                              Slider)
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..engine.predictor import Predictor
from ..models.registry import list_models
from ..tasks.deepliif import (MODALITIES, cell_polygons, cell_rows, load_deepliif_model, needs_store, run_deepliif,
                              summary, write_csv, write_geojson)
from ..tasks.deepliif_cells import NEGATIVE, POSITIVE, Thresholds
from ..tasks.layers import output_layer_name
from ..tasks.region import view_region
from ._output_layers import publish
from ._viewer_geometry import visible_data_corners
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_warning

CURRENT_VIEW = "current view"
WHOLE = "whole image"
CLASS_COLOURS = {POSITIVE: (1.0, 0.1, 0.1, 0.7), NEGATIVE: (0.2, 0.4, 1.0, 0.7)}  # excluded: transparent
CELLS = "cells"


def _run(model_key, device, data, name, region, seg_threshold, progress=None, cancel=None):
    """Worker body: load the model and run DeepLIIF. Touches no Qt.

    A very large region (say 10000 x 10000) keeps its modalities in a temporary zarr store
    on disk, shown lazily, so memory stays bounded.
    """
    model, card = load_deepliif_model(model_key)
    # fp32: bf16 moves segmentation pixels across the threshold and changes counts by a few percent.
    predictor = Predictor(model, card, device=device, precision="fp32")
    shape = region.shape if region is not None else tuple(data.shape[:2])
    store = tempfile.mkdtemp(prefix="deepliif-", suffix=".zarr") if needs_store(shape) else None
    return run_deepliif(predictor, data, name=name, region=region, segmentation_threshold=seg_threshold,
                        store=store, progress=progress, cancel=cancel)


class DeepLIIFWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self.result = None  # DeepLIIFResult of the last run
        self.classification = None
        self.cell_layer: Labels | None = None
        self._source = None  # the input layer of the last run
        self._updating = False  # set while recount writes the automatic values into the sliders

        self.input = ComboBox(label="IHC image", choices=self._rgb_layers)
        self.model = ComboBox(label="model", choices=self._model_names)
        self.folder = FileEdit(label="or release folder", mode="d", value="")
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=CURRENT_VIEW)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.seg_slider = Slider(label="segmentation", min=0, max=510, value=150, tooltip="red + blue above this is cell")
        self.size_slider = Slider(label="min cell size (px)", min=0, max=2000, value=0, enabled=False)
        self.size_auto = CheckBox(text="automatic size", value=True)
        self.marker_slider = Slider(label="marker", min=0, max=255, value=255, enabled=False)
        self.marker_auto = CheckBox(text="automatic marker", value=True)
        self.counts = Label(value="No cells yet: run DeepLIIF.")
        self.export_csv = PushButton(text="Export table (CSV)")
        self.export_geojson = PushButton(text="Export polygons (GeoJSON)")
        self.help = Label(value="Click a cell: flip positive/negative. Shift-click: exclude/restore.")
        self.container = Container(widgets=[
            self.input, self.model, self.folder, self.device, self.scope,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.progress, self.seg_slider, self.size_auto, self.size_slider, self.marker_auto, self.marker_slider,
            self.counts, Container(widgets=[self.export_csv, self.export_geojson], layout="horizontal", labels=False),
            self.help])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addStretch()

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.relay.progressed.connect(self._on_progress)
        for w in (self.size_slider, self.marker_slider, self.size_auto, self.marker_auto):
            w.changed.connect(self.recount)
        # Relabelling is fast but not free on big images: wait until the slider rests.
        self._relabel_timer = QTimer(self, singleShot=True, interval=150, timeout=self.relabel)
        self.seg_slider.changed.connect(lambda *_: self._relabel_timer.start())
        self.export_csv.changed.connect(lambda *_: self._export("csv"))
        self.export_geojson.changed.connect(lambda *_: self._export("geojson"))
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.reset_choices)

    # -- choices ---------------------------------------------------------------------------
    def _rgb_layers(self, *_):
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.rgb and "source_layer" not in layer.metadata]

    def _model_names(self, *_):
        return [e.name for e in list_models(task="deepliif")]

    def reset_choices(self, *_):
        self.input.reset_choices()
        self.model.reset_choices()

    def _model_key(self):
        folder = str(self.folder.value or "").strip()
        if folder and folder != "." and Path(folder).is_dir():
            return folder
        return self.model.value

    # -- running ---------------------------------------------------------------------------
    def _region_for(self, layer):
        if self.scope.value == WHOLE:
            return None
        box, point, displayed = visible_data_corners(self.viewer, layer)
        # an RGB layer's data has a trailing colour axis that napari does not count as a dimension
        return view_region(box[:, :2], tuple(point[:2]), tuple(layer.data.shape[:2]), (0, 1))

    def run(self, *_):
        if self.job is not None and self.job.running:
            return
        name, model_key = self.input.value, self._model_key()
        if name is None or name not in self.viewer.layers:
            show_warning("Choose an RGB IHC image layer first.")
            return
        if model_key is None:
            show_warning("No DeepLIIF model is installed; choose a DeepLIIF release folder.")
            return
        layer = self.viewer.layers[name]
        try:
            region = self._region_for(layer)
        except Exception as err:
            report_error(err, "DeepLIIF")
            return
        self._source = layer
        self.job = Job(_run, model_key, self.device.value, layer.data, layer.name, region,
                       int(self.seg_slider.value), on_result=self._on_result, on_done=self._on_done,
                       action="DeepLIIF", relay=self.relay, inputs=(layer,))
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self.launch(self.job)

    def _on_done(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _placement(self):
        layer = self._source
        scale = tuple(layer.scale[-2:])
        translate = tuple(float(t) + a * s for t, a, s in zip(layer.translate[-2:], self.result.region.start, scale))
        return scale, translate

    def _on_result(self, result):
        self.result = result
        self.help.tooltip = result.card.description  # e.g. the bundled model says it is a demonstration
        scale, translate = self._placement()
        tuples = [(result.images[m], {"name": output_layer_name(self._source.name, m), "rgb": True,
                                                  "scale": scale, "translate": translate, "blending": "additive",
                                                  "visible": False,
                                                  "metadata": {"source_layer": self._source.name, "channel": m}},
                   "image") for m in MODALITIES]
        publish(self.viewer, tuples)
        self._show_cells()

    # -- cells -----------------------------------------------------------------------------
    def thresholds(self) -> Thresholds:
        return Thresholds(segmentation=int(self.seg_slider.value),
                          size=None if self.size_auto.value else int(self.size_slider.value),
                          marker=None if self.marker_auto.value else int(self.marker_slider.value))

    def _show_cells(self):
        cells = self.result.cells
        name = output_layer_name(self._source.name, CELLS)
        scale, translate = self._placement()
        if self.cell_layer is None or self.cell_layer not in self.viewer.layers:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.cell_layer = self.viewer.add_labels(cells.labels, name=name, scale=scale, translate=translate,
                                                     metadata={"source_layer": self._source.name})
            self.cell_layer.mouse_drag_callbacks.append(self._on_click)
        else:
            self.cell_layer.data = cells.labels
            self.cell_layer.scale, self.cell_layer.translate = scale, translate
        self.recount()

    def relabel(self, *_):
        """The segmentation threshold changed: rebuild cells from the stored maps (no network)."""
        if self.result is None:
            return
        self.result.analyse(int(self.seg_slider.value))
        self._show_cells()

    def recount(self, *_):
        """Reclassify from the per-cell table and update colours, features and counts."""
        if self._updating:
            return
        self.size_slider.enabled = not self.size_auto.value
        self.marker_slider.enabled = not self.marker_auto.value
        if self.result is None or self.result.cells is None or self.cell_layer is None:
            return
        cells = self.result.cells
        self.classification = cells.classify(self.thresholds())
        t = self.classification.thresholds
        self._updating = True
        try:  # show the automatic values on the disabled sliders
            if self.size_auto.value:
                self.size_slider.value = min(t.size, self.size_slider.max)
            if self.marker_auto.value:
                self.marker_slider.value = min(max(t.marker, 0), 255)
        finally:
            self._updating = False
        classes = self.classification.classes
        colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colours.update({int(i): CLASS_COLOURS[int(c)] for i, c in enumerate(classes) if c in CLASS_COLOURS})
        self.cell_layer.colormap = DirectLabelColormap(color_dict=colours)
        rows = cell_rows(cells, self.classification)
        for row in rows:  # napari maps a Labels layer's feature rows to label values through "index"
            row["index"] = row["id"]
        self.cell_layer.features = rows
        info = summary(self.classification, self.result.card, self.result.region)
        self.cell_layer.metadata["deepliif"] = info
        c = self.classification
        self.counts.value = (f"{c.total} cells: {c.positive} positive, {c.negative} negative — "
                             f"{c.percent_positive:.1f}% positive (size > {t.size} px, marker > {t.marker})")

    def _on_click(self, layer, event):
        if self.result is None or layer.mode != "pan_zoom" or self.classification is None:
            return
        label = layer.get_value(event.position, world=True)
        if not label:
            return
        shift = any(str(m).lower().endswith("shift") for m in event.modifiers)
        self.result.cells.toggle(int(label), self.classification, exclude=shift)
        self.recount()

    # -- export ----------------------------------------------------------------------------
    def export(self, path, kind: str):
        """Write the current cells as CSV or GeoJSON (image pixel coordinates of the input layer)."""
        offset = self.result.region.start
        if kind == "csv":
            return write_csv(path, cell_rows(self.result.cells, self.classification, offset))
        return write_geojson(path, cell_polygons(self.result.cells, self.classification, offset))

    def _export(self, kind: str):
        if self.classification is None:
            show_warning("Run DeepLIIF first: there are no cells to export.")
            return
        from qtpy.QtWidgets import QFileDialog

        suffix = {"csv": "CSV (*.csv)", "geojson": "GeoJSON (*.geojson)"}[kind]
        path, _ = QFileDialog.getSaveFileName(self, "Export cells", f"cells.{kind}", suffix)
        if path:
            try:
                self.export(path, kind)
            except OSError as err:
                show_warning(f"Could not write {path}: {err}")
