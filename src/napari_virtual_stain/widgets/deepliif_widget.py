"""The DeepLIIF dock: IHC -> modalities and classified cells, with live thresholds and hand corrections.

A view of :class:`~napari_virtual_stain.workflows.deepliif.DeepLIIFSettings`, the object
``virtual-stain deepliif`` and ``deepliif-cells`` build: Run is enabled only with settings
that can run (the first reason why not is its tooltip), the run state is shown and the
settings are remembered. The networks run once (in a worker, with progress and Cancel);
the cell controls (``widgets.deepliif_cells``) then work on the stored maps.

"Count existing maps" does the same from Seg and Marker layers someone already has
(deepliif's ``*_Seg.png`` and ``*_mod4-Marker.png``/``*_Marker.png``, picked automatically
for the chosen IHC layer): no network runs. Every default is deepliif 1.2.7's, but for the cell
thresholds a model's card may recommend (``widgets.deepliif_cells``).

A multiscale (pyramid) IHC layer is run at one level (``widgets.geometry.level_view_over``):
the current view at the level napari displays (a zoomed-out view never reads the full
resolution), the whole image at the level chosen (auto: the one nearest the model's pixel
size). Modalities come back as pyramids over the input's coarser levels, placed over it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, RadioButtons
from napari.layers import Image
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.device import available_devices
from ..engine.predictor_cache import SHARED
from ..errors import InputError
from ..models.registry import list_models, program_notice
from ..tasks.deepliif_cells import MODEL
from ..tasks.deepliif_dab_vote import DAB, NETWORK
from ..tasks.deepliif_files import find_maps
from ..workflows import deepliif as workflow
from ..workflows.deepliif import DeepLIIFSettings
from ..workflows.settings_files import settings_file
from ._output_layers import publish
from .deepliif_cells import CELLS, MARKER_AUTO, MARKER_MANUAL, MARKER_OFF, RESOLUTION_AUTO, CellControls  # noqa: F401
from ._levels import chosen_level, level_choices
from .geometry import LevelView, layer_levels, level_view_over
from ._worker import JobDockMixin, Job, ProgressRelay, report_error, show_warning

CURRENT_VIEW = "current view"
WHOLE = "whole image"
NO_LAYER = "(none)"
PRECISIONS = ["fp32", "auto", "bf16"]
POSITIVE_CHOICES = [("the model's rule", MODEL), ("network colours", NETWORK), ("DAB vote", DAB)]


class DeepLIIFWidget(CellControls, JobDockMixin, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._life.on_close.append(SHARED.release)  # give the models' (GPU) memory back with the dock
        self.job: Job | None = None
        self.relay = ProgressRelay()
        self.result = None  # DeepLIIFResult of the last run
        self._source = None  # the input layer of the last run
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
        self.positive_from = ComboBox(
            label="positive cells", choices=POSITIVE_CHOICES,
            value=st.positive_from if st.positive_from in [v for _, v in POSITIVE_CHOICES] else MODEL,
            tooltip="which cells are positive, at the next run or count: the model's rule (deepliif-small: the "
                    "DAB vote; a release folder: its network), the network's red against blue (deepliif's rule), "
                    "or the IHC's own DAB by colour deconvolution in the network's cells")
        self.scope = RadioButtons(label="run on", choices=[CURRENT_VIEW, WHOLE], value=CURRENT_VIEW)
        self.level = ComboBox(label="whole-image level", choices=self._levels,
                              tooltip="for a pyramid: the level a whole-image run reads (auto: nearest the model's "
                                      "pixel size); a current view runs at the level on screen. The automatic "
                                      "magnification follows the level (40x halved is 20x)")
        self._view: LevelView | None = None  # the level and box of the last run (None: counted maps)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.run_state_label = Label(value="state: ready")
        self.seg_layer = ComboBox(label="or Seg layer", choices=self._map_layers,
                                  tooltip="an existing DeepLIIF segmentation map, e.g. ROI_1_Seg.png")
        self.marker_layer = ComboBox(label="Marker layer", choices=self._map_layers,
                                     tooltip="an existing DeepLIIF marker map, e.g. ROI_1_mod4-Marker.png")
        self.count_button = PushButton(text="Count existing maps (no network)")
        self.container = Container(widgets=[
            self.input, self.model, self.folder, self.model_info, self.device, self.precision, self.positive_from,
            self.scope, self.level,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.run_state_label, self.seg_layer, self.marker_layer, self.count_button, self.progress,
            *self._cell_widgets(st)])
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
        self.input.changed.connect(lambda *_: self.level.reset_choices())
        self.folder.changed.connect(self._folder_chosen)
        self._connect_cells()
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
            "positive_from": ((self.positive_from,), lambda: self.positive_from.value),
            **self._cell_writers(),
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
        self.model_info.value, self.model_info.tooltip = workflow.model_summary(self.settings.model)

    # -- choices ---------------------------------------------------------------------------
    def _rgb_layers(self, *_):
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.rgb and "source_layer" not in layer.metadata]

    def _map_layers(self, *_):
        return [NO_LAYER] + [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.rgb]

    def _model_names(self, *_):
        return [e.name for e in list_models(task="deepliif")]

    def _levels(self, *_):
        name = self.input.value if hasattr(self, "input") else None
        return level_choices(self.viewer.layers[name] if name in self.viewer.layers else None)

    def reset_choices(self, *_):
        for combo in (self.input, self.model, self.seg_layer, self.marker_layer, self.level):
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
    def _view_for(self, layer) -> LevelView:
        """The level and box (None: all) a run reads; an RGB layer's colour axis is not a napari axis."""
        from ..models.registry import model_card

        return level_view_over(self.viewer, layer, (0, 1), lambda data: tuple(data.shape[:2]),
                               whole=self.scope.value == WHOLE, level=chosen_level(self.level.value),
                               model_pixel_size_um=model_card(self.settings.model).pixel_size_um)

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
            view = self._view_for(layer)
        except Exception as err:
            report_error(err, "DeepLIIF")
            return
        if view.note:
            show_warning(view.note)
        snapshot = self.settings.remember("deepliif")  # the worker's own copy, remembered
        self._source, self._view = layer, view
        self._start(Job(workflow.run_in_temporary_store, snapshot, layer_levels(layer)[view.level], layer.name,
                        view.region, downsample=sum(view.downsample) / 2, on_result=self._on_result,
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
        problems = self.settings.cell_problems()
        if problems:
            report_error(InputError(problems[0]), "DeepLIIF")
            return
        self._source, self._view = layers[0], None
        self._start(Job(workflow.count_maps, *(layer_levels(layer)[0] for layer in layers), names, self.settings.copy(),
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
        view = self._view or LevelView(0, (1.0, 1.0), None)
        return view.place(self._source, (0, 1), self.result.region.start)

    def _on_result(self, result):
        previous = self.result.store if self.result is not None else None
        self.result = result
        self.help.tooltip = result.card.description  # e.g. the bundled model says it is a demonstration
        tuples = workflow.modality_tuples(result, self._source.name, self._placement())
        publish(self.viewer, self._view.pyramids(self._source, tuples, result.region.start))
        self._show_cells()
        if previous is not None and previous != result.store:  # its layers now show the new result
            shutil.rmtree(previous, ignore_errors=True)
