"""Training callbacks: a custom one sees every step and validation, early stop and a
callback's request_stop end the run, the built-ins come from the config."""

import numpy as np
import torch

from conftest import tiny_unet_card
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.training.callbacks import (Callback, EarlyStop, ReportProgress, SaveBestModel,
                                                     default_callbacks)
from napari_virtual_stain.training.trainer import TrainConfig, Trainer


def _trainer(**kw):
    rng = np.random.default_rng(0)
    x = rng.random((1, 64, 48), dtype=np.float32)
    card = tiny_unet_card()
    torch.manual_seed(0)
    config = dict(patch=(32, 32), batch_size=2, steps=5, val_every=2, lr=1e-2, val_fraction=0.3, device="cpu")
    config.update(kw)
    return Trainer(build_model(card.architecture, card.arch_args), card, [x], [np.concatenate([x, 1 - x])],
                   TrainConfig(**config))


class Recorder(Callback):
    def __init__(self):
        self.steps, self.validations, self.ends = [], [], []

    def on_step(self, trainer, info):
        self.steps.append((info.step, info.losses["train_loss"], info.scores is not None))

    def on_validation(self, trainer, info):
        self.validations.append((info.step, info.loss, info.improved))

    def on_end(self, trainer, result):
        self.ends.append(result)


def test_a_custom_callback_sees_every_step_validation_and_the_end():
    recorder = Recorder()
    trainer = _trainer()
    result = trainer.run(callbacks=[recorder])
    assert [s for s, _, _ in recorder.steps] == [1, 2, 3, 4, 5]
    assert [loss for _, loss, _ in recorder.steps] == [loss for _, loss in result.history["train"]]
    assert [validated for _, _, validated in recorder.steps] == [False, True, False, True, False]
    # before the first step, every val_every steps and once at the end
    assert [(s, loss) for s, loss, _ in recorder.validations] == result.history["val"]
    assert [s for s, _, _ in recorder.validations] == [0, 2, 4, 5]
    assert recorder.validations[0][2]  # the first validation is always the best so far
    best = min(recorder.validations, key=lambda v: v[1])
    assert result.best_step == best[0]
    assert recorder.ends == [result]


def test_early_stop_ends_the_run_after_patience_validations_without_improvement():
    trainer = _trainer(steps=30, lr=0.0)  # frozen weights: validation never improves after step 0
    assert any(isinstance(c, EarlyStop) for c in default_callbacks(TrainConfig(patience=2)))
    result = trainer.run(callbacks=[EarlyStop(2)])
    assert result.reason == "early_stopping" and not result.stopped
    assert result.steps == 4  # validations at 2 and 4 did not improve on step 0's


def test_a_callback_can_stop_the_run_with_its_own_reason():
    class StopAtThree(Callback):
        def on_step(self, trainer, info):
            if info.step == 3:
                trainer.request_stop("enough")

    recorder = Recorder()
    result = _trainer(steps=10).run(callbacks=[StopAtThree(), recorder])
    assert result.reason == "enough" and result.steps == 3
    assert [s for s, _, _ in recorder.steps] == [1, 2, 3]  # the callbacks after it still saw step 3
    assert recorder.validations[-1][0] == 3  # the usual final validation


def test_built_in_callbacks_follow_the_config_and_run_arguments(tmp_path):
    config = TrainConfig(best_path=str(tmp_path / "best.pt"))
    assert [type(c) for c in default_callbacks(config)] == [SaveBestModel]
    assert [type(c) for c in default_callbacks(TrainConfig(), progress=print)] == [ReportProgress]
    seen = []
    _trainer(steps=4).run(progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
