"""The DeepLIIF dock: IHC -> modalities and classified cells, with live thresholds and hand corrections.

The networks run once (in a worker, with progress and Cancel); everything after that is
post-processing on the stored maps: moving the size or marker slider reclassifies from
the per-cell table (microseconds), moving the segmentation slider relabels the stored
segmentation (no network), and clicking a cell flips it (Shift-click excludes it). The
counts are shown in the dock and kept in the cell layer's metadata.

"Count existing maps" does the same from Seg and Marker layers someone already has
(deepliif's ``*_Seg.png`` and ``*_mod4-Marker.png``/``*_Marker.png``, picked automatically
for the chosen IHC layer): no network runs. Every default is deepliif 1.2.7's.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np

from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, RadioButtons,
                              Slider)
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..engine.predictor_cache import SHARED, device_turn
from ..models.registry import DEEPLIIF_RELEASE, list_models, model_kind, program_notice
from ..models.deepliif_options import release_options
from ..tasks.deepliif import (MODALITIES, SEGMENTATION, DeepLIIFResult, cell_polygons, cell_rows,
                              load_deepliif_model, needs_store, run_deepliif, summary, write_csv, write_geojson)
from ..tasks.deepliif_cells import (AUTO, NEGATIVE, POSITIVE, RESOLUTIONS, SEG_THRESHOLD_DEFAULT, Thresholds,
                                    check_thresholds, resolution_for_tile)
from ..tasks.deepliif_files import check_maps, find_maps
from ..tasks.layers import output_layer_name
from ..tasks.region import Region
from ._output_layers import publish
from .geometry import placement, visible_region
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_warning

CURRENT_VIEW = "current view"
WHOLE = "whole image"
CLASS_COLOURS = {POSITIVE: (1.0, 0.1, 0.1, 0.7), NEGATIVE: (0.2, 0.4, 1.0, 0.7)}  # excluded: transparent
CELLS = "cells"
NO_LAYER = "(none)"
MARKER_OFF, MARKER_AUTO, MARKER_MANUAL = "none (deepliif's default)", "automatic", "manual"
RESOLUTION_AUTO = "from tile size"


def _run(model_key, device, precision, data, name, region, seg_threshold, resolution, progress=None, cancel=None):
    """Worker body: load the model and run DeepLIIF. Touches no Qt.

    A very large region (say 10000 x 10000) keeps its modalities in a temporary zarr store
    on disk, shown lazily, so memory stays bounded; the dock removes it when a new result
    replaces it, and whatever is left goes when napari exits.
    """
    predictor = SHARED.get(model_key, device, precision, load=load_deepliif_model)
    card = predictor.card
    shape = region.shape if region is not None else tuple(data.shape[:2])
    store = tempfile.mkdtemp(prefix="deepliif-", suffix=".zarr") if needs_store(shape) else None
    if store is not None:
        atexit.register(shutil.rmtree, store, True)
    try:
        with device_turn(predictor):
            result = run_deepliif(predictor, data, name=name, region=region, segmentation_threshold=seg_threshold,
                                  resolution=_resolution(resolution, card.tile[0]), store=store, progress=progress,
                                  cancel=cancel)
    except BaseException:
        if store is not None:
            shutil.rmtree(store, ignore_errors=True)  # a cancelled or failed run leaves nothing on disk
        raise
    if store is not None and result.store is None:  # a view inside the image: the result came back in memory
        shutil.rmtree(store, ignore_errors=True)
    return result


def _resolution(choice: str, tile: int) -> str:
    return resolution_for_tile(int(tile)) if choice == RESOLUTION_AUTO else choice


def _count_maps(ihc, seg, marker, names, seg_threshold, resolution, cancel=None):
    """Worker body for maps a user brought: check them and find the cells. No network, no Qt."""
    ihc, seg, marker = check_maps(ihc, seg, marker, names)
    images = {SEGMENTATION: seg, "Marker": marker}
    result = DeepLIIFResult(images, Region.whole(tuple(seg.shape[:2])), None)
    result.analyse(seg_threshold, _resolution(resolution, 512))  # deepliif's 512 tile: 40x
    return result


class DeepLIIFWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._life.on_close.append(SHARED.release)  # give the models' (GPU) memory back with the dock
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
        # fp32 by default: bf16 moved segmentation pixels across the threshold and cell counts by a few percent.
        self.precision = ComboBox(label="precision", choices=["fp32", "auto", "bf16"], value="fp32",
                                  tooltip="fp32 (default) gives deepliif's answers; auto/bf16 are faster on GPUs "
                                          "and CPUs with native bf16 but move cell counts by a few percent")
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=CURRENT_VIEW)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.seg_layer = ComboBox(label="or Seg layer", choices=self._map_layers,
                                  tooltip="an existing DeepLIIF segmentation map, e.g. ROI_1_Seg.png")
        self.marker_layer = ComboBox(label="Marker layer", choices=self._map_layers,
                                     tooltip="an existing DeepLIIF marker map, e.g. ROI_1_mod4-Marker.png")
        self.count_button = PushButton(text="Count existing maps (no network)")
        self.seg_slider = Slider(label="segmentation", min=0, max=510, value=SEG_THRESHOLD_DEFAULT,
                                 tooltip="red + blue above this is cell (deepliif: 120)")
        self.size_slider = Slider(label="min cell size (px)", min=0, max=2000, value=0, enabled=False)
        self.size_auto = CheckBox(text="automatic size (deepliif's rule)", value=True)
        self.upper_slider = Slider(label="max cell size (px, 0 = none)", min=0, max=20000, value=0)
        self.marker_mode = ComboBox(label="marker rule", choices=[MARKER_OFF, MARKER_AUTO, MARKER_MANUAL],
                                    value=MARKER_OFF, tooltip="a cell whose brightest marker pixel is above the "
                                    "marker threshold is positive; deepliif uses no marker rule by default")
        self.marker_slider = Slider(label="marker", min=0, max=255, value=255, enabled=False)
        self.resolution = ComboBox(label="magnification", choices=[RESOLUTION_AUTO, *RESOLUTIONS],
                                   value=RESOLUTION_AUTO, tooltip="for the automatic size rule; deepliif takes it "
                                   "from the tile size (512 -> 40x)")
        self.counts = Label(value="No cells yet: run DeepLIIF.")
        self.export_csv = PushButton(text="Export table (CSV)")
        self.export_geojson = PushButton(text="Export polygons (GeoJSON)")
        self.help = Label(value="Click a cell: flip positive/negative. Shift-click: exclude/restore.")
        self.container = Container(widgets=[
            self.input, self.model, self.folder, self.device, self.precision, self.scope,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.seg_layer, self.marker_layer, self.count_button,
            self.progress, self.seg_slider, self.size_auto, self.size_slider, self.upper_slider, self.marker_mode,
            self.marker_slider, self.resolution, self.counts, Container(widgets=[self.export_csv, self.export_geojson], layout="horizontal", labels=False),
            self.help])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addStretch()

        self.run_button.changed.connect(self.run)
        self.count_button.changed.connect(self.count_maps)
        self.cancel_button.changed.connect(self.cancel)
        self.relay.progressed.connect(self._on_progress)
        self.input.changed.connect(self._pick_maps)
        self.folder.changed.connect(self._folder_chosen)
        for w in (self.size_slider, self.marker_slider, self.size_auto, self.marker_mode, self.upper_slider):
            w.changed.connect(self.recount)
        # Relabelling is fast but not free on big images: wait until the slider rests.
        self._relabel_timer = QTimer(self, singleShot=True, interval=150, timeout=self.relabel)
        self.seg_slider.changed.connect(lambda *_: self._relabel_timer.start())
        self.resolution.changed.connect(lambda *_: self._relabel_timer.start())
        self.export_csv.changed.connect(lambda *_: self._export("csv"))
        self.export_geojson.changed.connect(lambda *_: self._export("geojson"))
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.reset_choices)

    # -- choices ---------------------------------------------------------------------------
    def _rgb_layers(self, *_):
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.rgb and "source_layer" not in layer.metadata]

    def _map_layers(self, *_):
        return [NO_LAYER] + [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.rgb]

    def _model_names(self, *_):
        return [e.name for e in list_models(task="deepliif")]

    def reset_choices(self, *_):
        for combo in (self.input, self.model, self.seg_layer, self.marker_layer):
            combo.reset_choices()
        self._pick_maps()

    def _pick_maps(self, *_):
        """Choose the IHC layer's own deepliif maps (ROI_1 -> ROI_1_Seg, ROI_1_mod4-Marker) where they are loaded."""
        if self.input.value is None:
            return
        seg, marker = find_maps(self.input.value, [layer.name for layer in self.viewer.layers])
        if seg is not None:
            self.seg_layer.value = seg
        if marker is not None:
            self.marker_layer.value = marker

    def _folder_chosen(self, *_):
        """Say before anything is loaded that a release folder's TorchScript networks are programs."""
        key = self._model_key()
        if key is None or key == self.model.value:
            return
        try:
            notice = program_notice(key)
        except Exception as err:  # not a release folder, not a package: the sentence says which
            report_error(err, "DeepLIIF")
            return
        if notice:
            self.help.tooltip = notice
            show_warning(notice)

    def _model_key(self):
        folder = str(self.folder.value or "").strip()
        if folder and folder != "." and Path(folder).is_dir():
            return folder
        return self.model.value

    # -- running ---------------------------------------------------------------------------
    def _region_for(self, layer):
        if self.scope.value == WHOLE:
            return None
        # an RGB layer's data has a trailing colour axis that napari does not count as a dimension
        return visible_region(self.viewer, layer, (0, 1), tuple(layer.data.shape[:2]))

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
            check_thresholds(self.thresholds())
            if Path(str(model_key)).is_dir() and model_kind(model_key) == DEEPLIIF_RELEASE:
                release_options(model_key)  # a wrong folder is refused at once, before the worker starts
            region = self._region_for(layer)
        except Exception as err:
            report_error(err, "DeepLIIF")
            return
        self._source = layer
        self._start(Job(_run, model_key, self.device.value, self.precision.value, layer.data, layer.name, region,
                        int(self.seg_slider.value), self.resolution.value, on_result=self._on_result,
                        on_done=self._on_done, action="DeepLIIF", relay=self.relay, inputs=(layer,)))

    def count_maps(self, *_):
        """Cells from the chosen Seg and Marker layers: the same post-processing, no network."""
        if self.job is not None and self.job.running:
            return
        names = (self.input.value, self.seg_layer.value, self.marker_layer.value)
        if names[0] is None or NO_LAYER in names[1:]:
            show_warning("Choose the IHC image and its Seg and Marker layers (deepliif's *_Seg and *_Marker files).")
            return
        layers = [self.viewer.layers[n] for n in names]
        try:
            check_thresholds(self.thresholds())
        except Exception as err:
            report_error(err, "DeepLIIF")
            return
        self._source = layers[0]
        self._start(Job(_count_maps, *(layer.data for layer in layers), names, int(self.seg_slider.value),
                        self.resolution.value, on_result=self._on_maps, on_done=self._on_done,
                        action="DeepLIIF cell count", inputs=tuple(layers)))

    def _start(self, job):
        self.job = job
        self.run_button.enabled = self.count_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.launch(self.job)

    def _on_done(self):
        self.run_button.enabled = self.count_button.enabled = True
        self.cancel_button.enabled = False

    def _on_maps(self, result):
        self.result = result
        self._show_cells()

    def _placement(self) -> dict:
        return placement(self._source, (0, 1), self.result.region.start)

    def _on_result(self, result):
        previous = self.result.store if self.result is not None else None
        self.result = result
        self.help.tooltip = result.card.description  # e.g. the bundled model says it is a demonstration
        tuples = [(result.images[m], {"name": output_layer_name(self._source.name, m), "rgb": True,
                                                  **self._placement(), "blending": "additive",
                                                  "visible": False,
                                                  "metadata": {"source_layer": self._source.name, "channel": m}},
                   "image") for m in MODALITIES]
        publish(self.viewer, tuples)
        self._show_cells()
        if previous is not None and previous != result.store:  # its layers now show the new result
            shutil.rmtree(previous, ignore_errors=True)

    # -- cells -----------------------------------------------------------------------------
    def thresholds(self) -> Thresholds:
        marker = {MARKER_OFF: None, MARKER_AUTO: AUTO}.get(self.marker_mode.value, int(self.marker_slider.value))
        return Thresholds(segmentation=int(self.seg_slider.value),
                          size=AUTO if self.size_auto.value else int(self.size_slider.value),
                          size_upper=int(self.upper_slider.value) or None, marker=marker)

    def _show_cells(self):
        cells = self.result.cells
        name = output_layer_name(self._source.name, CELLS)
        place = self._placement()
        if self.cell_layer is None or self.cell_layer not in self.viewer.layers:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.cell_layer = self.viewer.add_labels(cells.labels, name=name, **place,
                                                     metadata={"source_layer": self._source.name})
            self.cell_layer.mouse_drag_callbacks.append(self._on_click)
        else:
            self.cell_layer.data = cells.labels
            self.cell_layer.scale, self.cell_layer.translate = place["scale"], place["translate"]
            self.cell_layer.affine = place.get("affine", np.eye(3))
        self.recount()

    def relabel(self, *_):
        """The segmentation threshold changed: rebuild cells from the stored maps (no network)."""
        if self.result is None:
            return
        tile = self.result.card.tile[0] if self.result.card is not None else 512
        self.result.analyse(int(self.seg_slider.value), _resolution(self.resolution.value, tile))
        self._show_cells()

    def recount(self, *_):
        """Reclassify from the per-cell table and update colours, features and counts."""
        if self._updating:
            return
        self.size_slider.enabled = not self.size_auto.value
        self.marker_slider.enabled = self.marker_mode.value == MARKER_MANUAL
        if self.result is None or self.result.cells is None or self.cell_layer is None:
            return
        cells = self.result.cells
        try:
            self.classification = cells.classify(check_thresholds(self.thresholds()))
        except Exception as err:  # e.g. an upper size below the lower: say so, keep the last counts
            report_error(err, "DeepLIIF")
            return
        t = self.classification.thresholds
        self._updating = True
        try:  # show the automatic values on the disabled sliders
            if self.size_auto.value:
                self.size_slider.value = min(t.size, self.size_slider.max)
            if self.marker_mode.value == MARKER_AUTO and t.marker is not None:
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
        marker = "no marker rule" if t.marker is None else f"marker > {t.marker}"
        upper = "" if t.size_upper is None else f" and < {t.size_upper}"
        self.counts.value = (f"{c.total} cells: {c.positive} positive, {c.negative} negative — "
                             f"{c.percent_positive:.1f}% positive (size > {t.size}{upper} px, {marker}, "
                             f"{c.resolution})")

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
