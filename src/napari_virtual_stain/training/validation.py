"""The validation half of :class:`~napari_virtual_stain.training.trainer.Trainer` (a mixin):
predictions on held-out tiles, the validation loss and scores, the preview, and keeping the
best weights."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..metrics import tiled_channel_scores
from .callbacks import Callback, ValidationInfo
from .run_files import cpu_state


class TrainerValidation:
    """Needs the Trainer's ``model``, ``device``, ``generate``, ``loss_fn``, ``config``, ``card``,
    ``val_data``/``train_data``, ``history``, ``stopper`` and ``step``."""

    @torch.no_grad()
    def predict_patches(self, x: torch.Tensor) -> torch.Tensor:
        """The model's prediction in [0, 1] for a batch of normalised patches (eval mode)."""
        self.model.eval()
        return self.generate(x.to(self.device))

    def validate(self) -> tuple[float, dict]:
        """Validation loss (the reconstruction loss over all validation tiles) and scores.

        Tiles of one shape are batched together (the band may give smaller tiles than the
        patch); the loss is the mean of the batches' losses weighted by their valid pixels.
        """
        data = self.val_data
        preds, ys, masks, losses, weights = [], [], [], [], []
        batch: list = []

        def flush():
            x, y, mask = (torch.stack(parts) for parts in zip(*batch))
            pred = self.predict_patches(x).cpu()
            losses.append(float(self.loss_fn(pred, y, mask)))
            weights.append(float(mask.sum()))
            preds.extend(pred.numpy())
            ys.extend(y.numpy())
            masks.extend(mask.numpy() > 0)
            batch.clear()

        for i in range(len(data)):
            item = data[i]
            if batch and (len(batch) == self.config.batch_size or item[0].shape != batch[0][0].shape):
                flush()
            batch.append(item)
        if batch:
            flush()
        loss = float(np.average(losses, weights=weights)) if sum(weights) > 0 else 0.0
        scores = tiled_channel_scores(preds, ys, masks, names=self.card.output_channels)
        return loss, scores

    def preview(self) -> np.ndarray:
        """Prediction (T, ...) on the fixed preview patch (the first validation tile)."""
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        x, _, _ = data.fixed_patch()
        return self.predict_patches(x[None])[0].cpu().numpy()

    def _validated(self, callbacks: Sequence[Callback]) -> tuple[float, dict]:
        """Validate, record it, keep the weights if they are the best, tell the callbacks."""
        loss, scores = self.validate()
        self.history["val"].append((self.step, loss))
        improved, _ = self.stopper.update(loss, self.step)  # stopping is EarlyStop's (callbacks)
        if improved:
            self.best_state = cpu_state(self.model)
            self.best_scores = scores
        info = ValidationInfo(step=self.step, loss=loss, scores=scores, improved=improved)
        for callback in callbacks:
            callback.on_validation(self, info)
        return loss, scores
