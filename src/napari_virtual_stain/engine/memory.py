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
