"""The Fine-tune dock's live feedback: the loss curve, the preview layer and the status line.

The trainer reports an update (step, seconds per step, time left, validation loss, a
preview of the fixed validation patch) from the worker thread; :class:`UpdateRelay` carries
it to the UI thread, where :class:`TrainingFeedback` draws it. The sentences and the preview's
place come from ``workflows.finetune_outputs``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..tasks.layers import overlay_tuples
from ..workflows import finetune_outputs as outputs
from ._output_layers import publish
from .geometry import placement, spatial_axes


class UpdateRelay(QObject):
    updated = Signal(object)

    def __call__(self, update) -> None:  # from the worker thread
        self.updated.emit(update)


class TrainingFeedback:
    """Mixed into the Fine-tune dock, which provides ``viewer``, ``trainer``, ``plot`` and ``status``."""

    def _plot_history(self, history: dict) -> None:
        self.plot.set_series("train", history.get("train", []))
        self.plot.set_series("validation", history.get("val", []))

    def _on_update(self, update):
        if not self.dock_alive():
            return
        self._plot_history(self.trainer.history if self.trainer is not None else {})
        self.status.value = outputs.describe_update(update)
        if update.preview is not None:
            self._show_preview(update.preview)

    def _show_preview(self, preview: np.ndarray):
        trainer = self.trainer
        source = trainer.source_layer
        if not self.dock_alive() or source not in self.viewer.layers:  # no previews for a removed layer
            return
        planes = source.data.shape[0] if source.ndim == 3 else None
        preview, start, names = outputs.preview_patch(trainer, preview, planes)
        axes = spatial_axes(source, len(start))  # the preview covers the input's last spatial axes
        publish(self.viewer, overlay_tuples(preview, names, source.name, placement(source, axes, start),
                                            contrast=[(0.0, 1.0)] * len(names)))

    def _on_result(self, result):
        self._plot_history(result.history)
        self.status.value = outputs.describe_result(result)
