"""The DeepLIIF dock's cell controls: live thresholds, the cell layer, clicks and exports.

Everything here works on the stored maps of the last result (no network): moving the size
or marker slider reclassifies from the per-cell table (microseconds), moving the
segmentation or split slider relabels the stored segmentation, and clicking a cell flips it
(Shift-click excludes it). The fields write :class:`DeepLIIFSettings`' cell values, the
ones ``virtual-stain deepliif-cells`` takes as arguments; the classes, colours, counts and
files come from the workflow (``workflows.deepliif``, ``workflows.deepliif_results``).
A threshold the user has not set is left to the model ("model" in the settings): the field
shows the chosen model's recommended value (its card's, deepliif's for a release folder) and,
after a run or a count, the value that result used (deepliif's for maps a user brought).
Moving a field sets that threshold for every model until it is remembered otherwise.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, Slider
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer

from ..tasks.deepliif import summary
from ..tasks.deepliif_cells import AUTO, MAX_GROW, MAX_SPLIT, MODEL, RESOLUTIONS, is_model
from ..tasks.layers import output_layer_name
from ..workflows import deepliif as workflow
from ..workflows import deepliif_results as shown
from ._worker import report_error, show_warning

CELLS = "cells"
MARKER_OFF, MARKER_AUTO, MARKER_MANUAL = "none (deepliif's default)", "automatic", "manual"
RESOLUTION_AUTO = "from tile size"
THRESHOLD_SETTINGS = ("seg_threshold", "size", "size_upper", "marker", "split", "grow")  # DeepLIIFSettings' cell thresholds


class CellControls:
    """Mixed into the DeepLIIF dock, which provides ``viewer``, ``settings``, ``result`` and
    ``_source`` (the input layer of the last result) and its placement (``_placement``)."""

    def _cell_widgets(self, st) -> list:
        self.classification = None
        self.cell_layer = None
        self._updating = False  # set while recount writes the automatic values into the sliders
        self._programmatic = False  # set while the dock shows values left to the model (not the user's)
        self._touched = {f for f in THRESHOLD_SETTINGS if not is_model(getattr(st, f))}  # thresholds the user set
        t = workflow.shown_thresholds(st)  # values left to the model: its card's, as numbers the fields show
        self.seg_slider = Slider(label="segmentation", min=0, max=510, value=min(max(int(t.segmentation), 0), 510),
                                 tooltip="red + blue above this is cell (deepliif: 120; a model of ours may "
                                         "recommend its own)")
        manual_size = isinstance(t.size, int) and 0 <= t.size <= 2000
        self.size_slider = Slider(label="min cell size (px)", min=0, max=2000, value=t.size if manual_size else 0,
                                  enabled=manual_size)
        self.size_auto = CheckBox(text="automatic size (deepliif's rule)", value=not manual_size)
        self.upper_slider = Slider(label="max cell size (px, 0 = none)", min=0, max=20000,
                                   value=min(max(int(t.size_upper or 0), 0), 20000))
        mode = (MARKER_AUTO if t.marker == AUTO else MARKER_MANUAL
                if isinstance(t.marker, int) and 0 <= t.marker <= 255 else MARKER_OFF)
        self.marker_mode = ComboBox(label="marker rule", choices=[MARKER_OFF, MARKER_AUTO, MARKER_MANUAL], value=mode,
                                    tooltip="a cell whose brightest marker pixel is above the marker threshold is "
                                            "positive; deepliif uses no marker rule by default")
        self.marker_slider = Slider(label="marker", min=0, max=255, enabled=mode == MARKER_MANUAL,
                                    value=t.marker if mode == MARKER_MANUAL else 255)
        self.split_slider = Slider(label="split touching nuclei (px, 0 = off)", min=0, max=MAX_SPLIT,
                                   value=min(max(int(t.split or 0), 0), MAX_SPLIT),
                                   tooltip="cut a cell region where its nuclei's distance-transform peaks are at least "
                                           "this deep (not a deepliif step: off for release folders; our models' "
                                           "cards recommend a depth)")
        self.grow_slider = Slider(label="grow cells (px, 0 = off)", min=0, max=MAX_GROW,
                                  value=min(max(int(t.grow or 0), 0), MAX_GROW),
                                  tooltip="grow every cell this many pixels into the background after the split, "
                                          "never into another cell (not a deepliif step: off for release folders; "
                                          "our models' cards recommend a growth)")
        self.resolution = ComboBox(label="magnification", choices=[RESOLUTION_AUTO, *RESOLUTIONS],
                                   value=st.resolution if st.resolution in RESOLUTIONS else RESOLUTION_AUTO,
                                   tooltip="for the automatic size rule; deepliif takes it from the tile size (512 -> 40x)")
        self.counts = Label(value="No cells yet: run DeepLIIF.")
        self.export_csv = PushButton(text="Export table (CSV)")
        self.export_geojson = PushButton(text="Export polygons (GeoJSON)")
        self.help = Label(value="Click a cell: flip positive/negative. Shift-click: exclude/restore.")
        for name, widgets in self._threshold_widgets().items():  # before the settings writers: they read the mark
            for w in widgets:
                w.changed.connect(lambda *_, name=name: self._touch(name))
        return [self.seg_slider, self.split_slider, self.grow_slider, self.size_auto, self.size_slider, self.upper_slider, self.marker_mode,
                self.marker_slider, self.resolution, self.counts,
                Container(widgets=[self.export_csv, self.export_geojson], layout="horizontal", labels=False), self.help]

    def _threshold_widgets(self) -> dict:
        return {"seg_threshold": (self.seg_slider,), "split": (self.split_slider,), "grow": (self.grow_slider,),
                "size": (self.size_auto, self.size_slider),
                "size_upper": (self.upper_slider,), "marker": (self.marker_mode, self.marker_slider)}

    def _touch(self, name: str) -> None:
        if not (self._programmatic or self._updating):
            self._touched.add(name)

    def _or_model(self, name: str, value):
        """A writer: the field's value once the user set it, "model" before."""
        return lambda: value() if name in self._touched else MODEL

    def _cell_writers(self) -> dict:
        """Settings field -> (the fields that set it, its value from them)."""
        w = self._threshold_widgets()
        return {
            "seg_threshold": (w["seg_threshold"], self._or_model("seg_threshold", lambda: int(self.seg_slider.value))),
            "size": (w["size"], self._or_model("size", lambda: AUTO if self.size_auto.value
                                               else int(self.size_slider.value))),
            "size_upper": (w["size_upper"], self._or_model("size_upper", lambda: int(self.upper_slider.value) or None)),
            "marker": (w["marker"], self._or_model("marker", lambda: {MARKER_OFF: None, MARKER_AUTO: AUTO}.get(
                self.marker_mode.value, int(self.marker_slider.value)))),
            "split": (w["split"], self._or_model("split", lambda: int(self.split_slider.value) or None)),
            "grow": (w["grow"], self._or_model("grow", lambda: int(self.grow_slider.value) or None)),
            "resolution": ((self.resolution,), lambda: AUTO if self.resolution.value == RESOLUTION_AUTO
                           else self.resolution.value),
        }

    def _connect_cells(self) -> None:
        for w in (self.size_slider, self.marker_slider, self.size_auto, self.marker_mode, self.upper_slider):
            w.changed.connect(self.recount)
        self.settings.events.model.connect(self.use_model_thresholds)
        self.use_model_thresholds()  # the model shown may not be the remembered one
        # Relabelling is fast but not free on big images: wait until the slider rests. Values the dock
        # shows itself (a result's or a model's thresholds) need none: the cells were made with them.
        self._relabel_timer = QTimer(self, singleShot=True, interval=150, timeout=self.relabel)
        for w in (self.seg_slider, self.split_slider, self.grow_slider, self.resolution):
            w.changed.connect(lambda *_: None if self._programmatic else self._relabel_timer.start())
        self.export_csv.changed.connect(lambda *_: self._export("csv"))
        self.export_geojson.changed.connect(lambda *_: self._export("geojson"))

    def thresholds(self):
        """The thresholds in use: the last result's (its model's for values left to the model), else the chosen model's."""
        if self.result is not None:
            return self.settings.thresholds(self.result.card)
        return workflow.shown_thresholds(self.settings)

    def use_model_thresholds(self, *_):
        """Show the chosen model's recommended values in the fields the user has not set."""
        self._show_thresholds(workflow.shown_thresholds(self.settings))

    def _show_thresholds(self, t):
        """Put ``t``'s values in the fields the user has not set (they stay left to the model)."""
        self._programmatic = True
        try:
            if "size" not in self._touched:
                manual_size = isinstance(t.size, int)
                self.size_auto.value = not manual_size
                if manual_size:
                    self.size_slider.value = min(max(t.size, 0), self.size_slider.max)
            if "size_upper" not in self._touched:
                self.upper_slider.value = min(max(int(t.size_upper or 0), 0), self.upper_slider.max)
            if "marker" not in self._touched:
                self.marker_mode.value = (MARKER_AUTO if t.marker == AUTO else MARKER_OFF if t.marker is None
                                          else MARKER_MANUAL)
                if isinstance(t.marker, int):
                    self.marker_slider.value = t.marker
            if "seg_threshold" not in self._touched:
                self.seg_slider.value = min(max(int(t.segmentation), 0), 510)
            if "split" not in self._touched:
                self.split_slider.value = min(max(int(t.split or 0), 0), MAX_SPLIT)
            if "grow" not in self._touched:
                self.grow_slider.value = min(max(int(t.grow or 0), 0), MAX_GROW)
        finally:
            self._programmatic = False

    def _show_cells(self):
        self._show_thresholds(self.thresholds())  # what this result used (deepliif's for maps a user brought)
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
        """The segmentation threshold, split or growth changed: rebuild cells from the stored maps (no network)."""
        if self.result is None or self._source not in self.viewer.layers:
            return  # nothing shown, or its image was removed (or the viewer is closing)
        workflow.reanalyse(self.result, self.settings)
        self._show_cells()

    def recount(self, *_):
        """Reclassify from the per-cell table and update colours, features and counts."""
        if self._updating:
            return
        self.size_slider.enabled = not self.size_auto.value
        self.marker_slider.enabled = self.marker_mode.value == MARKER_MANUAL
        if self.result is None or self.result.cells is None or self.cell_layer is None:
            return
        try:
            self.classification = workflow.classify(self.result, self.settings)
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
        self.cell_layer.colormap = DirectLabelColormap(color_dict=shown.cell_colours(self.classification))
        self.cell_layer.features = shown.cell_features(self.result.cells, self.classification)
        self.cell_layer.metadata["deepliif"] = summary(self.classification, self.result.card, self.result.region)
        self.counts.value = shown.describe_counts(self.classification)

    def _on_click(self, layer, event):
        if self.result is None or layer.mode != "pan_zoom" or self.classification is None:
            return
        label = layer.get_value(event.position, world=True)
        if not label:
            return
        shift = any(str(m).lower().endswith("shift") for m in event.modifiers)
        self.result.cells.toggle(int(label), self.classification, exclude=shift)
        self.recount()

    def export(self, path, kind: str):
        """Write the current cells as CSV or GeoJSON (image pixel coordinates of the input layer)."""
        return shown.export_cells(self.result, self.classification, path, kind)

    def _export(self, kind: str):
        if self.classification is None:
            show_warning("Run DeepLIIF first: there are no cells to export.")
            return
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Export cells", f"cells.{kind}", shown.EXPORTS[kind])
        if path:
            try:
                self.export(path, kind)
            except OSError as err:
                show_warning(f"Could not write {path}: {err}")
