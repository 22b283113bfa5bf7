"""The one predictor cache the docks share."""

import threading
import time

import numpy as np

from napari_virtual_stain.engine import predictor_cache
from napari_virtual_stain.engine.predictor_cache import PredictorCache, device_turn
from napari_virtual_stain.models.registry import load_model

from conftest import save_tiny_model


def test_a_second_run_reuses_the_loaded_model(user_models):
    save_tiny_model(user_models, name="tiny-2d")
    cache, loads = PredictorCache(), []

    def counting_load(name):
        loads.append(name)
        return load_model(name)

    first = cache.get("tiny-2d", "cpu", "fp32", load=counting_load)
    assert cache.get("tiny-2d", "cpu", "fp32", load=counting_load) is first and loads == ["tiny-2d"]
    assert cache.get("tiny-2d", "cpu", "auto", load=counting_load) is not first  # precision is part of the key


def test_a_model_saved_again_under_its_name_is_reloaded(user_models):
    path, _ = save_tiny_model(user_models, name="tiny-2d")
    cache = PredictorCache()
    first = cache.get("tiny-2d", "cpu", "fp32")
    time.sleep(0.01)
    save_tiny_model(user_models, name="tiny-2d", outputs=("nuclei",))  # Fine-tune > Save under the same name
    second = cache.get("tiny-2d", "cpu", "fp32")
    assert second is not first and second.card.output_channels == ["nuclei"]
    assert len(cache) == 1  # the stale version is gone, not kept beside it


def test_the_cache_is_bounded_and_released(user_models):
    for i in range(4):
        save_tiny_model(user_models, name=f"m{i}")
    cache = PredictorCache(max_entries=2)
    for i in range(4):
        cache.get(f"m{i}", "cpu", "fp32")
    assert len(cache) == 2
    cache.release()
    assert len(cache) == 0


def test_threads_get_one_predictor_each_and_see_no_half_built_entry(user_models):
    save_tiny_model(user_models, name="tiny-2d")
    cache, got = PredictorCache(), []
    threads = [threading.Thread(target=lambda: got.append(cache.get("tiny-2d", "cpu", "fp32"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len(cache) == 1
    out = got[0].predict(np.zeros((1, 40, 40), np.float32))
    assert out.shape == (2, 40, 40)


def test_only_gpu_jobs_take_turns(user_models, monkeypatch):
    save_tiny_model(user_models, name="tiny-2d")
    predictor = PredictorCache().get("tiny-2d", "cpu", "fp32")
    with predictor_cache._GPU_LOCK:  # a GPU job is running elsewhere
        with device_turn(predictor):  # a CPU job does not wait for it
            pass


def test_a_gpu_job_waits_for_the_turn_and_a_cancelled_wait_ends_without_it():
    import torch

    from napari_virtual_stain.engine import gpu_turn

    gpu = torch.device("cuda")  # only the device type is looked at: no GPU needed here
    holding, release, log = threading.Event(), threading.Event(), []

    def other_dock():
        with device_turn(gpu) as held:
            log.append(("other", held))
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=other_dock)
    thread.start()
    holding.wait(5)
    cancel = threading.Event()
    threading.Timer(2 * gpu_turn.WAIT_POLL_S, cancel.set).start()
    with device_turn(gpu, cancel) as held:  # waits until Stop: then it winds up without the turn
        log.append(("mine", held))
    assert cancel.is_set() and log == [("other", True), ("mine", False)]
    release.set()
    thread.join(5)
    with device_turn(gpu) as outer, device_turn(gpu) as inner:  # re-entrant: a workflow may hold it around runs
        assert outer and inner
    assert gpu_turn._GPU_LOCK.acquire(blocking=False)  # and it was given back
    gpu_turn._GPU_LOCK.release()


def test_predict_and_training_ask_for_the_turn_with_their_cancel_event(user_models, monkeypatch):
    import contextlib

    from conftest import tiny_unet_card
    from napari_virtual_stain.engine import predictor as predictor_module
    from napari_virtual_stain.models.factory import build_model
    from napari_virtual_stain.training import trainer as trainer_module

    asked = []

    @contextlib.contextmanager
    def recording(target, cancel=None):
        asked.append((type(target).__name__, cancel))
        yield True

    monkeypatch.setattr(predictor_module, "device_turn", recording)
    monkeypatch.setattr(trainer_module, "device_turn", recording)
    save_tiny_model(user_models, name="tiny-2d")
    cancel = threading.Event()
    PredictorCache().get("tiny-2d", "cpu", "fp32").predict(np.zeros((1, 40, 40), np.float32), cancel=cancel)
    card = tiny_unet_card()
    x = np.random.default_rng(0).random((1, 48, 48), dtype=np.float32)
    trainer = trainer_module.Trainer(build_model(card.architecture, card.arch_args), card, [x], [np.concatenate([x, 1 - x])],
                                     trainer_module.TrainConfig(patch=(32, 32), batch_size=2, steps=1, val_fraction=0.0,
                                                                device="cpu"))
    trainer.run(cancel=cancel)
    assert asked == [("Predictor", cancel), ("Trainer", cancel)]


def test_stop_while_waiting_for_the_gpu_ends_a_training_run_before_its_first_step(monkeypatch):
    import contextlib

    from conftest import tiny_unet_card
    from napari_virtual_stain.models.factory import build_model
    from napari_virtual_stain.training import trainer as trainer_module

    @contextlib.contextmanager
    def stopped_while_waiting(target, cancel=None):
        cancel.set()  # the user pressed Stop while another dock held the GPU
        yield False

    monkeypatch.setattr(trainer_module, "device_turn", stopped_while_waiting)
    card = tiny_unet_card()
    x = np.random.default_rng(0).random((1, 96, 48), dtype=np.float32)
    trainer = trainer_module.Trainer(build_model(card.architecture, card.arch_args), card, [x], [np.concatenate([x, 1 - x])],
                                     trainer_module.TrainConfig(patch=(32, 32), batch_size=2, steps=5, val_fraction=0.3,
                                                                device="cpu"))
    result = trainer.run(cancel=threading.Event())
    assert result.stopped and result.steps == 0 and trainer.history["val"] == []  # not even the first validation


def test_tagged_modules_are_served_per_file_version_and_variant(tmp_path):
    """Modules a task loaded itself: one predictor per (file as read, variant, device)."""
    from napari_virtual_stain.engine.predictor_cache import remember_source

    path, _ = save_tiny_model(tmp_path, name="tiny-2d")
    cache = PredictorCache()
    a, card = load_model(path)
    b, _ = load_model(path)
    first = cache.for_module(remember_source(a, path), card, "cpu")
    assert cache.for_module(remember_source(b, path), card, "cpu") is first and first.model is a
    other = cache.for_module(remember_source(load_model(path)[0], path, variant="B"), card, "cpu")
    assert other is not first and len(cache) == 2  # one file, two views of it (the joint imputer's markers)
    untagged = load_model(path)[0]
    assert cache.for_module(untagged, card, "cpu") is not cache.for_module(untagged, card, "cpu")
    assert len(cache) == 2  # a module without a file is never kept
