"""The Preprocess dock: tile-shadow correction, flat-field correction, focus selection, normalisation.

Thin by design: each section reads its parameters, hands a core function from
``napari_virtual_stain.preprocess`` (or ``engine.normalise``) to a worker thread, and turns
the result into NEW layers named "<input> · <what>" with the input's scale and translate.
The input layer is never modified. Outputs do not carry ``source_layer`` metadata, so the
other docks offer them as inputs (preprocessing comes before staining).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox,
)
from napari.layers import Image, Points
from qtpy.QtWidgets import QGroupBox, QVBoxLayout, QWidget

from ..engine.normalise import compute_stats, normalise
from ..errors import Cancelled, InputError, VirtualStainError
from ..preprocess import cast_like, correct_flatfield, correct_tile_shadow, select_in_focus
from ..preprocess._common import channels_first, channels_last
from ..tasks.layers import output_layer_name
from ._output_layers import publish
from ._plot import LinePlot
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_warning

AUTO_TILES = "emptiest tiles (automatic)"


# -- worker bodies: plain functions, no Qt ---------------------------------------------------


def _tile_shadow(data, rgb, tile, tiles, n_empty, criterion, remove_background, strict, progress=None, cancel=None):
    source = np.asarray(data)
    result = correct_tile_shadow(channels_first(source, rgb), tile, tiles=tiles, n_empty=n_empty or None,
                                 criterion=criterion, remove_background=remove_background, strict=strict,
                                 progress=progress, cancel=cancel)
    corrected = cast_like(channels_last(result.corrected, rgb), source.dtype)
    artifact = channels_last(result.artifact, rgb)
    return {"shadow-corrected": corrected,
            "artifact estimate": cast_like(artifact, source.dtype) if rgb else artifact}, {"tiles": result.tiles}


def _flatfield(data, rgb, sigma, mode, method, progress=None, cancel=None):
    source = np.asarray(data)
    result = correct_flatfield(channels_first(source, rgb), sigma=sigma, mode=mode, method=method,
                               progress=progress, cancel=cancel)
    corrected = cast_like(channels_last(result.corrected, rgb), source.dtype)
    return {"flat-field corrected": corrected}, {"sigma": sigma, "mode": mode, "method": method}


def _focus(data, rgb, keep, min_score, sharper, progress=None, cancel=None):
    result = select_in_focus(channels_first(np.asarray(data), rgb), keep=keep, min_score=min_score,
                             sharper=sharper, progress=progress, cancel=cancel)
    info = {"kept_planes": result.indices.tolist(), "plls": result.scores.tolist(), "sharper": sharper}
    return {"in-focus planes": channels_last(result.planes, rgb)}, info


def _normalise(data, rgb, low, high, progress=None, cancel=None):
    # A grey layer (any number of axes) is one channel; an RGB layer has three.
    values = channels_first(np.asarray(data), rgb) if rgb else np.asarray(data)[None]
    spec = {"kind": "percentile", "low": low, "high": high}
    stats = compute_stats(values, spec)
    out = normalise(values, spec, stats)
    out = np.clip(out, 0.0, 1.0) if rgb else out[0]  # RGB floats are shown in [0, 1]
    return {"normalised": channels_last(out, rgb) if rgb else out}, {"normalisation": {"spec": spec, "stats": stats}}


def _focus_problem(layer) -> str | None:
    """Why focus selection cannot use ``layer`` (one sentence), or None."""
    shape = tuple(layer.data.shape)
    spatial = shape[:-1] if layer.rgb else shape  # napari's axes: an RGB layer's colour axis is not one
    kind = "RGB " if layer.rgb else ""
    if len(spatial) < 3:
        return (f"Focus selection needs a z-stack, but '{layer.name}' is a single {kind}plane "
                f"({'x'.join(map(str, spatial))}): choose a (Z, Y, X) stack.")
    if len(spatial) > (3 if layer.rgb else 4):
        return (f"Focus selection needs a (Z, Y, X) {'RGB ' if layer.rgb else 'or (C, Z, Y, X) '}stack, "
                f"but '{layer.name}' has {len(spatial)} axes ({'x'.join(map(str, spatial))}).")
    if spatial[-3] < 2:
        return f"Focus selection needs at least 2 planes, but '{layer.name}' has {spatial[-3]}."
    return None


# -- the dock -----------------------------------------------------------------------------------


class PreprocessWidget(JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self.input = ComboBox(label="input", choices=self._image_layers)

        self.tile = SpinBox(label="tile size (px)", value=304, min=2, max=100000)
        self.tile_source = ComboBox(label="artifact from", choices=self._tile_sources)
        self.n_empty = SpinBox(label="tiles to average", value=0, min=0, max=100000,
                               tooltip="0 = the emptiest 10 % of the complete tiles")
        self.criterion = ComboBox(label="empty means", choices=["flat", "dark", "bright"], value="flat",
                                  tooltip="flat: least variation; dark: lowest mean; bright: highest mean")
        self.remove_background = CheckBox(text="also remove the background level (paper 000)", value=False)
        self.strict = CheckBox(text="refuse a tile size that does not divide the image", value=False)
        self.tile_run = PushButton(text="Correct tile shadow")

        self.sigma = FloatSpinBox(label="sigma (px)", value=50.0, min=0.5, max=10000.0, step=1.0)
        self.mode = ComboBox(label="mode", choices=["divide", "subtract"], value="divide")
        self.method = ComboBox(label="background", choices=["gaussian", "opening"], value="gaussian")
        self.flat_run = PushButton(text="Correct flat field")

        self.keep = SpinBox(label="keep N best planes", value=1, min=0, max=100000,
                            tooltip="0 = use the minimum score instead")
        self.min_score = FloatSpinBox(label="or PLLS at least", value=-2.0, min=-100.0, max=100.0, step=0.1)
        self.sharper = ComboBox(label="sharper is", choices=["higher", "lower"], value="higher",
                                tooltip="higher: blur steepens the slope (usual); lower: noisy stacks (paper 002)")
        self.focus_run = PushButton(text="Score planes and keep the best")
        self.plot = LinePlot("focus of each plane", x_label="plane", y_label="PLLS")

        self.low = FloatSpinBox(label="low percentile", value=1.0, min=0.0, max=100.0, step=0.1)
        self.high = FloatSpinBox(label="high percentile", value=99.8, min=0.0, max=100.0, step=0.1)
        self.norm_run = PushButton(text="Normalise")

        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
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
        self._section(layout, "Percentile normalisation", [self.low, self.high, self.norm_run])
        layout.addWidget(Container(widgets=[self.cancel_button, self.progress, self.info]).native)
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
        self._start(layer, "Tile-shadow correction", _tile_shadow, self.tile.value, tiles, self.n_empty.value,
                    self.criterion.value, self.remove_background.value, self.strict.value)

    def run_flatfield(self, *_):
        layer = self._input_layer()
        if layer is not None:
            self._start(layer, "Flat-field correction", _flatfield, self.sigma.value, self.mode.value,
                        self.method.value)

    def run_focus(self, *_):
        layer = self._input_layer()
        if layer is not None and not self._refused("Focus selection", _focus_problem(layer)):
            keep = self.keep.value or None
            min_score = None if keep else self.min_score.value
            self._start(layer, "Focus selection", _focus, keep, min_score, self.sharper.value)

    def run_normalise(self, *_):
        layer = self._input_layer()
        if layer is not None:
            self._start(layer, "Normalisation", _normalise, self.low.value, self.high.value)

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

    def _start(self, layer, action, func, *params):
        self._context = (layer, action)
        self.job = Job(func, layer.data, layer.rgb, *params, on_result=self._on_result, on_done=self._on_done,
                       action=action, relay=self.relay, on_error=self._on_error, inputs=(layer,))
        for button in (self.tile_run, self.flat_run, self.focus_run, self.norm_run):
            button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.info.value = f"{action} of '{layer.name}'…"
        self.launch(self.job)

    def _on_result(self, result):
        layer, action = self._context
        outputs, info = result
        metadata = dict(info, preprocessed_from=layer.name)
        tuples = []
        for what, data in outputs.items():
            translate = list(layer.translate)
            if "kept_planes" in info:  # the first kept plane's z position
                z_axis = len(translate) - 3
                translate[z_axis] += info["kept_planes"][0] * layer.scale[z_axis]
            kwargs = {"name": output_layer_name(layer.name, what), "scale": list(layer.scale),
                      "translate": translate, "metadata": metadata, "rgb": layer.rgb}
            tuples.append((data, kwargs, "image"))
        publish(self.viewer, tuples)
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
        for button in (self.tile_run, self.flat_run, self.focus_run, self.norm_run):
            button.enabled = True
        self.cancel_button.enabled = False
