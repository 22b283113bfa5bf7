"""Device choice and precision (no GPU needed: availability is faked where it matters)."""

import pytest
import torch

from napari_virtual_stain.engine import device as device_module
from napari_virtual_stain.engine.device import (
    autocast_context,
    available_devices,
    preferred_memory_format,
    resolve_device,
    resolve_precision,
)
from napari_virtual_stain.errors import InputError


def _fake(monkeypatch, cuda=False, mps=False, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    monkeypatch.setattr(device_module, "_mps_available", lambda: mps)


def test_available_devices_lists_what_exists(monkeypatch):
    _fake(monkeypatch)
    assert available_devices() == ["auto", "cpu"]
    _fake(monkeypatch, cuda=True, mps=True)
    assert available_devices() == ["auto", "cpu", "cuda", "mps"]


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    _fake(monkeypatch, cuda=True, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    _fake(monkeypatch, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    _fake(monkeypatch)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")


def test_absent_device_raises_a_sentence(monkeypatch):
    _fake(monkeypatch)
    with pytest.raises(InputError, match="CUDA was requested but this computer has no CUDA GPU; choose 'cpu' or 'auto'."):
        resolve_device("cuda")
    with pytest.raises(InputError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(InputError, match="not a device name"):
        resolve_device("gpu please")
    _fake(monkeypatch, cuda=True)
    with pytest.raises(InputError, match="only 1 CUDA GPU"):
        resolve_device("cuda:3")


def test_auto_precision_per_device(monkeypatch):
    _fake(monkeypatch, cuda=True, bf16=True)
    assert resolve_precision(torch.device("cuda"), "auto") == "bf16"
    _fake(monkeypatch, cuda=True, bf16=False)
    assert resolve_precision(torch.device("cuda"), "auto") == "fp16"
    with pytest.raises(InputError, match="bf16"):
        resolve_precision(torch.device("cuda"), "bf16")
    assert resolve_precision(torch.device("mps"), "auto") == "fp32"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision(torch.device("cpu"), "auto") == "bf16"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert resolve_precision(torch.device("cpu"), "fp32") == "fp32"
    with pytest.raises(InputError, match="Precision"):
        resolve_precision(torch.device("cpu"), "int8")


def test_autocast_context_changes_compute_dtype_on_cpu():
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 8, 8)
    cpu = torch.device("cpu")
    with autocast_context(cpu, "bf16") as concrete:
        assert concrete == "bf16"
        assert conv(x).dtype == torch.bfloat16
    with autocast_context(cpu, "fp32") as concrete:
        assert concrete == "fp32"
        assert conv(x).dtype == torch.float32


def test_channels_last_except_on_mps():
    cpu = torch.device("cpu")
    assert preferred_memory_format(cpu, 2) is torch.channels_last
    assert preferred_memory_format(cpu, 3) is torch.channels_last_3d
    assert preferred_memory_format(torch.device("cuda"), 2) is torch.channels_last
    assert preferred_memory_format(torch.device("mps"), 2) is torch.contiguous_format
