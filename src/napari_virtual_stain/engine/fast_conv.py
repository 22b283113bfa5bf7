"""Faster CPU convolutions for wide layers at batch size 1: NNPACK's Winograd/FFT kernels.

PyTorch ships NNPACK but calls it only for batches of 16 or more, so the Predictor's single
tiles always get oneDNN's direct convolution. On a 2-core AMD EPYC with AVX2 (torch 2.13,
``bench/bench_fast_conv.py``, numbers in bench/RESULTS.md) NNPACK is much faster for the layers
that dominate DeepLIIF's ResNet-9 translators: a 3x3 convolution 256 -> 256 on 128 x 128,
0.15 s with oneDNN against 0.065 s; 7x7 64 -> 3 on 512 x 512, 0.22 s against 0.053 s. On
narrow layers (3x3 with 64 channels or fewer) and small maps it is slower, so it is used only
for 3x3 layers that read at least ``MIN_3X3_CHANNELS`` channels, and for every larger kernel
(NNPACK's FFT path: 7x7 3 -> 64 on 512 x 512 was 1.35x faster), on maps of at least
``MIN_PIXELS`` (below, NNPACK's per-call kernel transform costs more than it saves).

Winograd arithmetic is not bit-identical to a direct convolution: a 3x3 256 -> 256 layer differs
by about 1e-5 of its output scale (``bench_fast_conv.py``), and a whole ResNet-9 translator by
under 0.01 of an 8-bit level (``bench_traced_rebuild.py``). Set ``VIRTUAL_STAIN_NNPACK=0`` to use PyTorch's own
convolution everywhere.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

# Input channels from which NNPACK's 3x3 (Winograd) path pays (bench_fast_conv.py, 128 x 128
# maps): 128 was 1.35x faster than oneDNN, 64 and 16 1.5x slower.
MIN_3X3_CHANNELS = 128
# Input pixels from which NNPACK pays: at 256 channels it was 2.3x faster on 128 x 128, 1.26x on
# 64 x 64, 0.94x on 48 x 48 and 4x slower on 16 x 16 (it transforms the kernel on every call).
MIN_PIXELS = 64 * 64


@functools.lru_cache(maxsize=1)
def nnpack_ready() -> bool:
    """True when this PyTorch has a working NNPACK and the user has not turned it off.

    ``torch._nnpack_available()`` also initialises NNPACK: its convolution fails until then.
    """
    if os.environ.get("VIRTUAL_STAIN_NNPACK", "1").strip() in {"0", "false", "no", "off"}:
        return False
    probe = getattr(torch, "_nnpack_available", None)
    if probe is None or not hasattr(torch, "_nnpack_spatial_convolution"):
        return False
    try:
        if not probe():
            return False
        x, w = torch.ones(1, 2, 6, 6), torch.ones(2, 2, 3, 3)
        y = torch._nnpack_spatial_convolution(x, w, torch.zeros(2), [1, 1])
        return bool(torch.allclose(y, F.conv2d(x, w, padding=1)))
    except RuntimeError:
        return False


def _wants_nnpack(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 4 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")  # autocast asks for bf16: oneDNN does that
            and _pays(x, tuple(weight.shape)) and nnpack_ready())


def _pays(x: torch.Tensor, shape: tuple[int, ...]) -> bool:
    _, channels, kh, kw = shape
    if x.shape[-1] * x.shape[-2] < MIN_PIXELS:
        return False
    if (kh, kw) == (3, 3):  # worth converting a channels_last input for: 2.5x at 256 channels
        return channels >= MIN_3X3_CHANNELS
    # Larger kernels only on inputs already in NCHW: converting a channels_last 64 x 512 x 512 map
    # costs 0.11 s, more than NNPACK saves on a 7x7 64 -> 3 layer (oneDNN: 0.13 s in channels_last).
    return min(kh, kw) >= 5 and x.is_contiguous()


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=padding)``, through NNPACK where that is faster.

    Returns a contiguous (NCHW) tensor on the NNPACK path; gradients, other devices, other
    dtypes and autocast always take PyTorch's own convolution.
    """
    if not _wants_nnpack(x, weight):
        return F.conv2d(x, weight, bias, padding=padding)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])  # NNPACK needs one
    return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [padding, padding])
