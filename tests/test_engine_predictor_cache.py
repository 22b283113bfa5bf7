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
