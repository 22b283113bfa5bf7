"""Which device runs the networks, and in which precision.

"auto" picks CUDA, then Apple's MPS, then the CPU. Precision "auto" means:

- CUDA: bf16 autocast where the GPU supports it (Ampere and later), else fp16.
- MPS: fp32 (autocast support and accuracy vary with the macOS version; stay exact).
- CPU: bf16 autocast only when the processor has native bf16 instructions (avx512_bf16 or
  AMX), else fp32, where bf16 is emulated and slower. Measured with bench/bench_tiling.py
  (2-core AMD EPYC with avx512_bf16, torch 2.13, one thread; numbers in bench/RESULTS.md):
  the 2D U-Net depth 4 base 32, briefly trained on real brightfield -> DAPI, on a real
  512x512 tile: fp32 1.58 s, fp32 + channels_last 1.20 s, bf16 + channels_last 0.54 s
  (2.9x faster than fp32, 2.2x faster than fp32 + channels_last). The sigmoid output
  differs from fp32 by 1.5e-3 on average (0.4 grey levels on an 8-bit display) and by
  1e-2 to 2.6e-2 at the single worst pixel across runs: far below a virtual stain's own
  error, so bf16 is the default there. The 3D U-Net (depth 3, base 16) behaves alike
  (bench_3d_stack.py). Choose "fp32" for bit-faithful output.

channels_last memory layout lets oneDNN (CPU) and cuDNN (tensor cores) use their fastest
convolution kernels; :func:`preferred_memory_format` says when the Predictor uses it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch

from ..errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# A card's ``extra`` key: "fp32" makes "auto" mean fp32 for that model. Models from outside (bioimage.io
# packages, DeepLIIF release folders) carry it: their authors' answers are the reference, and bf16 put
# 3521 ppm of the shared nuclei-broad package's test output outside its own tolerance (100 allowed) on
# an AVX-512 bf16 EPYC, and moved a DeepLIIF release's outputs by up to 15 grey levels.
AUTO_PRECISION = "auto_precision"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device names a user can choose here, "auto" first (e.g. ``["auto", "cpu", "cuda"]``)."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device name ("auto", "cpu", "cuda", "cuda:1", "mps") into a ``torch.device``.

    "auto" prefers CUDA, then MPS, then the CPU. Asking for a device this computer does
    not have raises :class:`InputError` with a sentence saying what to choose instead.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(
            f"{name!r} is not a device name; choose one of {', '.join(available_devices())}."
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was requested but this computer has no CUDA GPU; choose 'cpu' or 'auto'.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"GPU {device.index} was requested but this computer has only "
                f"{torch.cuda.device_count()} CUDA GPU(s); choose 'cuda' or 'auto'."
            )
    elif device.type == "mps" and not _mps_available():
        raise InputError("MPS (Apple GPU) was requested but it is not available here; choose 'cpu' or 'auto'.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"The device {name!r} is not supported; choose one of {', '.join(available_devices())}.")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 maths natively (x86 avx512_bf16 / AMX, or ARM bf16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass  # not Linux: no cheap way to know, so stay with fp32
    return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The concrete precision ("fp32", "bf16" or "fp16") that ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if precision != "auto":
        if device.type == "cpu" and precision == "fp16":
            raise InputError("fp16 is not useful on the CPU (it is emulated and slow); choose 'bf16', 'fp32' or 'auto'.")
        if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise InputError("This GPU cannot compute in bf16; choose precision 'fp16', 'fp32' or 'auto'.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


@contextlib.contextmanager
def autocast_context(device: torch.device, precision: str = "auto") -> Iterator[str]:
    """Run the enclosed forward passes in ``precision`` on ``device``; yields the concrete precision.

    Weights stay fp32: autocast runs convolutions and matrix products in the lower
    precision and keeps reductions (normalisation layers) in fp32.
    """
    concrete = resolve_precision(device, precision)
    if concrete == "fp32":
        yield concrete
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[concrete]):
        yield concrete


def preferred_memory_format(device: torch.device, spatial_dims: int) -> torch.memory_format:
    """The memory layout the Predictor gives models and tiles: channels_last except on MPS.

    Measured on the CPU (2-core AVX512-BF16 EPYC, see bench/RESULTS.md): 2D U-Net depth 4
    base 32 on 512x512: channels_last 1.3x faster in fp32 (max difference 5e-7) and 1.5x on
    top of bf16; 3D U-Net depth 3 base 16 on 32x128x128: channels_last_3d 1.1x in fp32 and
    1.6x on top of bf16. cuDNN prefers it for tensor cores. MPS support for
    it is patchy, so tensors stay contiguous there.
    """
    if device.type == "mps":
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
