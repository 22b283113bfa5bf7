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

import shutil
from pathlib import Path

import numpy as np

from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, RadioButtons,
                              Slider)
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..engine.predictor_cache import SHARED
from ..errors import InputError
from ..models.registry import list_models, model_card, program_notice
from ..tasks.deepliif import cell_polygons, cell_rows, summary, write_csv, write_geojson
from ..tasks.deepliif_cells import AUTO, NEGATIVE, POSITIVE, RESOLUTIONS, check_thresholds
from ..tasks.deepliif_files import find_maps
from ..tasks.layers import output_layer_name
from ..workflows import deepliif as workflow
from ..workflows.deepliif import DeepLIIFSettings, describe_model
from ..workflows.settings_files import settings_file
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
PRECISIONS = ["fp32", "auto", "bf16"]


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
        # The dock is a view of these settings: the same object ``virtual-stain deepliif`` builds,
        # remembered between launches of napari.
        self.settings = st = DeepLIIFSettings.load(settings_file("deepliif"))

        self.input = ComboBox(label="IHC image", choices=self._rgb_layers)
        self.model = ComboBox(label="model", choices=self._model_names)
        self.model_info = Label(value="")  # which model is active and what it learnt from
        self.folder = FileEdit(label="or release folder", mode="d", value="")
        devices = available_devices()
        self.device = ComboBox(label="device", choices=devices, value=st.device if st.device in devices else "auto")
        # fp32 by default: bf16 moved segmentation pixels across the threshold and cell counts by a few percent.
        self.precision = ComboBox(label="precision", choices=PRECISIONS,
                                  value=st.precision if st.precision in PRECISIONS else "fp32",
                                  tooltip="fp32 (default) gives deepliif's answers; auto/bf16 are faster on GPUs "
                                          "and CPUs with native bf16 but move cell counts by a few percent")
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=CURRENT_VIEW)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.run_state_label = Label(value="state: ready")
        self.seg_layer = ComboBox(label="or Seg layer", choices=self._map_layers,
                                  tooltip="an existing DeepLIIF segmentation map, e.g. ROI_1_Seg.png")
        self.marker_layer = ComboBox(label="Marker layer", choices=self._map_layers,
                                     tooltip="an existing DeepLIIF marker map, e.g. ROI_1_mod4-Marker.png")
        self.count_button = PushButton(text="Count existing maps (no network)")
        self.seg_slider = Slider(label="segmentation", min=0, max=510, value=min(max(int(st.seg_threshold), 0), 510),
                                 tooltip="red + blue above this is cell (deepliif: 120)")
        manual_size = isinstance(st.size, int) and 0 <= st.size <= 2000
        self.size_slider = Slider(label="min cell size (px)", min=0, max=2000, value=st.size if manual_size else 0,
                                  enabled=manual_size)
        self.size_auto = CheckBox(text="automatic size (deepliif's rule)", value=not manual_size)
        self.upper_slider = Slider(label="max cell size (px, 0 = none)", min=0, max=20000,
                                   value=min(max(int(st.size_upper or 0), 0), 20000))
        marker_mode = (MARKER_OFF if st.marker is None else MARKER_AUTO if st.marker == AUTO
                       else MARKER_MANUAL if isinstance(st.marker, int) and 0 <= st.marker <= 255 else MARKER_OFF)
        self.marker_mode = ComboBox(label="marker rule", choices=[MARKER_OFF, MARKER_AUTO, MARKER_MANUAL],
                                    value=marker_mode, tooltip="a cell whose brightest marker pixel is above the "
                                    "marker threshold is positive; deepliif uses no marker rule by default")
        self.marker_slider = Slider(label="marker", min=0, max=255, enabled=marker_mode == MARKER_MANUAL,
                                    value=st.marker if marker_mode == MARKER_MANUAL else 255)
        self.resolution = ComboBox(label="magnification", choices=[RESOLUTION_AUTO, *RESOLUTIONS],
                                   value=st.resolution if st.resolution in RESOLUTIONS else RESOLUTION_AUTO,
                                   tooltip="for the automatic size rule; deepliif takes it "
                                   "from the tile size (512 -> 40x)")
        self.counts = Label(value="No cells yet: run DeepLIIF.")
        self.export_csv = PushButton(text="Export table (CSV)")
        self.export_geojson = PushButton(text="Export polygons (GeoJSON)")
        self.help = Label(value="Click a cell: flip positive/negative. Shift-click: exclude/restore.")
        self.container = Container(widgets=[
            self.input, self.model, self.folder, self.model_info, self.device, self.precision, self.scope,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.run_state_label,
            self.seg_layer, self.marker_layer, self.count_button,
            self.progress, self.seg_slider, self.size_auto, self.size_slider, self.upper_slider, self.marker_mode,
            self.marker_slider, self.resolution, self.counts, Container(widgets=[self.export_csv, self.export_geojson], layout="horizontal", labels=False),
            self.help])
        layout = QVBoxLayout(self)
        layout.addWidget(self.container.native)
        layout.addStretch()

        if not settings_file("deepliif").is_file():
            pass  # nothing remembered yet: the first model listed (a user's own before the bundled one)
        elif st.model in self.model.choices:
            self.model.value = st.model
        elif st.model and Path(st.model).is_dir():
            self.folder.value = st.model
        self._bind()
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
        self.input.changed.connect(self._check_settings)
        self._describe_model()
        self._check_settings()

    def _bind(self) -> None:
        """Each field writes its settings value; the settings' events re-check whether Run can run."""
        st = self.settings
        writers = {
            "model": ((self.model, self.folder), lambda: self._model_key() or ""),
            "device": ((self.device,), lambda: self.device.value),
            "precision": ((self.precision,), lambda: self.precision.value),
            "seg_threshold": ((self.seg_slider,), lambda: int(self.seg_slider.value)),
            "size": ((self.size_auto, self.size_slider), lambda: AUTO if self.size_auto.value else int(self.size_slider.value)),
            "size_upper": ((self.upper_slider,), lambda: int(self.upper_slider.value) or None),
            "marker": ((self.marker_mode, self.marker_slider), lambda: {MARKER_OFF: None, MARKER_AUTO: AUTO}.get(
                self.marker_mode.value, int(self.marker_slider.value))),
            "resolution": ((self.resolution,), lambda: AUTO if self.resolution.value == RESOLUTION_AUTO
                           else self.resolution.value),
        }
        for name, (widgets, value) in writers.items():
            setattr(st, name, value())
            for widget in widgets:
                widget.changed.connect(lambda *_, name=name, value=value: setattr(st, name, value()))
        st.events.model.connect(self._describe_model)
        st.events.connect(self._check_settings)

    def _check_settings(self, *_) -> list[str]:
        """Run is enabled only with settings that can run; the first problem is its tooltip."""
        problems = ([] if self.input.value is not None else ["Choose an RGB IHC image layer first."])
        problems += self.settings.problems()
        idle = self.job is None or not self.job.running
        self.run_button.enabled = idle and not problems
        self.run_button.tooltip = problems[0] if problems else ""
        return problems

    def _describe_model(self, *_) -> None:
        """Which model is active and what it learnt from (an official release folder says so)."""
        if not self.settings.model:
            self.model_info.value = "No DeepLIIF model chosen."
            return
        try:
            card = model_card(self.settings.model)
        except Exception as err:  # a wrong folder: its sentence, not a traceback
            self.model_info.value = f"This model cannot be used: {err}"
            self.model_info.tooltip = ""
            return
        self.model_info.value = describe_model(card)
        self.model_info.tooltip = card.description

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
        name = self.input.value
        if name is None or name not in self.viewer.layers:
            show_warning("Choose an RGB IHC image layer first.")
            return
        problems = self._check_settings()
        if problems:  # a wrong release folder or threshold: said at once, before any worker starts
            report_error(InputError(problems[0]), "DeepLIIF")
            return
        layer = self.viewer.layers[name]
        try:
            region = self._region_for(layer)
        except Exception as err:
            report_error(err, "DeepLIIF")
            return
        snapshot = self.settings.copy()  # the worker's own copy: the user may change the dock
        try:
            snapshot.save(settings_file("deepliif"))
        except OSError:  # remembering is a convenience, never a reason not to run
            pass
        self._source = layer
        self._start(Job(workflow.run_in_temporary_store, snapshot, layer.data, layer.name, region, on_result=self._on_result,
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
        self._start(Job(workflow.count_maps, *(layer.data for layer in layers), names, self.settings.copy(),
                        on_result=self._on_maps, on_done=self._on_done,
                        action="DeepLIIF cell count", inputs=tuple(layers)))

    def _start(self, job):
        self.job = job
        self.run_button.enabled = self.count_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.launch(self.job)

    def _on_done(self):
        self.count_button.enabled = True
        self.cancel_button.enabled = False
        self._check_settings()

    def _on_maps(self, result):
        self.result = result
        self._show_cells()

    def _placement(self) -> dict:
        return placement(self._source, (0, 1), self.result.region.start)

    def _on_result(self, result):
        previous = self.result.store if self.result is not None else None
        self.result = result
        self.help.tooltip = result.card.description  # e.g. the bundled model says it is a demonstration
        tuples = workflow.modality_tuples(result, self._source.name, self._placement())
        publish(self.viewer, tuples)
        self._show_cells()
        if previous is not None and previous != result.store:  # its layers now show the new result
            shutil.rmtree(previous, ignore_errors=True)

    # -- cells -----------------------------------------------------------------------------
    def thresholds(self):
        return self.settings.thresholds()

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
        self.result.analyse(self.settings.seg_threshold, self.settings.resolution_for(tile))
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
