"""The "Release GPU memory" command: in the manifest (napari's command palette), and what it does."""

from importlib.resources import files

import torch

from napari_virtual_stain.engine import memory, predictor_cache
from napari_virtual_stain.engine.predictor_cache import SHARED
from napari_virtual_stain.widgets import gpu_memory

from conftest import save_tiny_model


def test_the_manifest_offers_the_command_and_it_points_at_the_function():
    from npe2 import PluginManifest
    from npe2.manifest.utils import import_python_name

    manifest = PluginManifest.from_file(files("napari_virtual_stain") / "napari.yaml")
    command, = [c for c in manifest.contributions.commands if c.id == "napari-virtual-stain.release_gpu_memory"]
    assert command.title == "Release GPU memory"  # napari adds "(Virtual Stain)" in its palette
    assert import_python_name(command.python_name) is gpu_memory.release_gpu_memory
    assert command.id not in {w.command for w in manifest.contributions.widgets}  # an action, not a dock


def test_releasing_forgets_the_loaded_models_and_empties_the_device_caches(user_models, monkeypatch):
    said, emptied = [], []
    monkeypatch.setattr(gpu_memory, "show_info", said.append)
    monkeypatch.setattr(predictor_cache, "empty_device_caches", lambda: emptied.append(True))
    monkeypatch.setattr(gpu_memory, "accelerator_reserved_bytes", iter([3 * 2**20, 2**20]).__next__)
    save_tiny_model(user_models, name="tiny-2d")
    SHARED.release()
    SHARED.get("tiny-2d", "cpu", "fp32")
    assert len(SHARED) == 1
    message = gpu_memory.release_gpu_memory()
    assert len(SHARED) == 0 and emptied == [True, True]
    assert said == [message] and message == "Released 1 loaded model: the GPU memory held went from 3 MB to 1 MB."


def test_without_a_gpu_the_command_says_so_and_emptying_is_harmless(monkeypatch):
    said = []
    monkeypatch.setattr(gpu_memory, "show_info", said.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    memory.empty_device_caches()  # nothing to empty on a CPU: no error
    assert memory.accelerator_reserved_bytes() is None
    assert "there is no GPU here" in gpu_memory.release_gpu_memory() and len(said) == 1
