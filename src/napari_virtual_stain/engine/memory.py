"""Refuse work that cannot fit in memory before it starts, with a sentence instead of a crash.

A small compressed TIFF can decode to gigabytes, and a whole-image prediction allocates its
result in memory. Allocating first and failing later (or being killed by the system) loses
the user's time; asking the system how much memory is free costs nothing.
"""

from __future__ import annotations

import os

from ..errors import InputError

# Leave room for the interpreter, the model and temporary arrays beside the big ones.
USABLE_FRACTION = 0.8


def available_bytes() -> int | None:
    """Memory the system can give this process now (MemAvailable on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def require_memory(nbytes: int, what: str, advice: str = "use a smaller image or region") -> None:
    """Raise InputError when ``nbytes`` (for ``what``) will not fit in the memory free now."""
    free = available_bytes()
    if free is not None and nbytes > USABLE_FRACTION * free:
        raise InputError(f"{what} needs about {_gb(nbytes)} of memory but only {_gb(free)} is free: {advice}.")


# ---- device (GPU) memory ------------------------------------------------------------------
# torch is imported inside these functions: the host-memory checks above serve the
# preprocessing CLI, which should not pay for importing torch.

# What MPS puts in the RuntimeError it raises when Apple's GPU has no memory left
# ("MPS backend out of memory (MPS allocated: ..., other allocations: ...)"); CUDA raises
# torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class).
MPS_OUT_OF_MEMORY = "MPS backend out of memory"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device running out of memory (CUDA or MPS), which a smaller batch may avoid."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and MPS_OUT_OF_MEMORY in str(err)


def release_cached_memory(device) -> None:
    """Give the allocator's cached blocks back to the device (after an out-of-memory error)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def empty_device_caches() -> None:
    """Give every accelerator's cached, unused blocks back (CUDA, MPS); nothing to do on a CPU.

    Collects garbage first: a dropped model in a reference cycle still holds its tensors
    until the collector runs, and the allocator can only give back what nothing holds.
    """
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    backend = getattr(torch.backends, "mps", None)
    if mps is not None and backend is not None and backend.is_available():
        mps.empty_cache()


def accelerator_reserved_bytes() -> int | None:
    """Bytes torch's allocators hold on this process's GPUs (CUDA, MPS), or None without a GPU."""
    import torch

    if torch.cuda.is_available():
        return int(sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count())))
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        return int(torch.mps.driver_allocated_memory())
    return None


def cuda_free_bytes(device) -> int:
    """Bytes a CUDA device can still give this process: free on the device plus what torch's
    caching allocator holds but does not use (the driver counts that as taken)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def batch_for_memory(free_bytes: int, per_tile_bytes: int, cap: int) -> int:
    """The number of tiles per batch that fits in ``USABLE_FRACTION`` of ``free_bytes`` when
    one tile costs ``per_tile_bytes`` at its peak, between 1 and ``cap``."""
    if per_tile_bytes <= 0:
        return max(1, int(cap))
    return max(1, min(int(cap), int(USABLE_FRACTION * free_bytes) // int(per_tile_bytes)))
