"""NNPACK convolutions for wide layers: same answers as PyTorch's own, taken only where they pay."""

import pytest
import torch
import torch.nn.functional as F

from napari_virtual_stain.engine import fast_conv


@pytest.fixture
def nnpack_calls(monkeypatch):
    """Counts the calls that reach NNPACK (the real function still runs)."""
    fast_conv.nnpack_ready()  # its own probe call happens before counting
    calls = []
    real = torch._nnpack_spatial_convolution

    def counting(*args):
        calls.append(tuple(args[1].shape))
        return real(*args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
    return calls


def _pair(channels, out, kernel, side, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, side, side, generator=g)
    w = torch.randn(out, channels, kernel, kernel, generator=g) * 0.05
    return x, w, torch.randn(out, generator=g)


def test_a_wide_3x3_layer_goes_through_nnpack_with_the_same_answer(nnpack_calls):
    x, w, b = _pair(128, 64, 3, 64)
    with torch.no_grad():
        got = fast_conv.conv2d(x, w, b, padding=1)
        expected = F.conv2d(x.double(), w.double(), b.double(), padding=1).float()
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    assert nnpack_calls == ([(64, 128, 3, 3)] if fast_conv.nnpack_ready() else [])


def test_a_channels_last_input_and_no_bias_give_the_same_answer(nnpack_calls):
    x, w, _ = _pair(128, 32, 3, 64, seed=1)
    with torch.no_grad():
        got = fast_conv.conv2d(x.contiguous(memory_format=torch.channels_last), w, None, padding=1)
        expected = F.conv2d(x.double(), w.double(), padding=1).float()
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    assert len(nnpack_calls) == (1 if fast_conv.nnpack_ready() else 0)


def test_narrow_and_small_layers_gradients_and_channels_last_large_kernels_keep_pytorch(nnpack_calls):
    narrow = _pair(64, 64, 3, 64)
    small = _pair(256, 8, 3, 48)
    seven = _pair(64, 3, 7, 64)
    with torch.no_grad():
        fast_conv.conv2d(*narrow, padding=1)  # 64 channels: NNPACK is no faster
        fast_conv.conv2d(*small, padding=1)  # 48 x 48: its kernel transform costs more than it saves
        fast_conv.conv2d(seven[0].contiguous(memory_format=torch.channels_last), *seven[1:], padding=3)
    x, w, b = _pair(128, 8, 3, 64)
    w.requires_grad_(True)
    y = fast_conv.conv2d(x, w, b, padding=1)  # gradients: NNPACK's inference call has none
    y.sum().backward()
    assert nnpack_calls == []
    assert w.grad is not None and torch.allclose(y, F.conv2d(x, w, b, padding=1), atol=1e-5)


def test_a_7x7_layer_in_nchw_goes_through_nnpack(nnpack_calls):
    x, w, b = _pair(16, 3, 7, 64, seed=2)
    with torch.no_grad():
        got = fast_conv.conv2d(x, w, b, padding=3)
    assert torch.allclose(got, F.conv2d(x, w, b, padding=3), atol=1e-4)
    assert len(nnpack_calls) == (1 if fast_conv.nnpack_ready() else 0)


def test_the_environment_variable_turns_nnpack_off(monkeypatch, nnpack_calls):
    monkeypatch.setenv("VIRTUAL_STAIN_NNPACK", "0")
    fast_conv.nnpack_ready.cache_clear()
    try:
        assert not fast_conv.nnpack_ready()
        x, w, b = _pair(128, 16, 3, 16)
        with torch.no_grad():
            got = fast_conv.conv2d(x, w, b, padding=1)
        assert nnpack_calls == [] and torch.allclose(got, F.conv2d(x, w, b, padding=1))
    finally:
        monkeypatch.delenv("VIRTUAL_STAIN_NNPACK")
        fast_conv.nnpack_ready.cache_clear()
