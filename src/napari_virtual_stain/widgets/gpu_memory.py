"""The "Release GPU memory" command (napari's command palette: Virtual Stain).

The docks keep the models they ran loaded on the device (``engine.predictor_cache.SHARED``),
so a second run starts at once; this gives that memory back on request, e.g. before another
program needs the GPU. The next run loads its model again. A Fine-tune dock's model is the
user's unsaved work: it stays until that dock closes.
"""

from __future__ import annotations

from napari.utils.notifications import show_info

from ..engine.memory import accelerator_reserved_bytes
from ..engine.predictor_cache import SHARED


def release_gpu_memory():
    """Forget every loaded model of the docks and empty the GPU caches; says what it gave back.

    No return annotation on purpose: napari would look for a processor of the returned type.
    """
    models, before = len(SHARED), accelerator_reserved_bytes()
    SHARED.release()  # also collects garbage and empties the CUDA / MPS caches
    after = accelerator_reserved_bytes()
    loaded = f"{models} loaded model{'' if models == 1 else 's'}"
    if before is None:
        message = f"Released {loaded}; there is no GPU here, so their memory went back to the system."
    else:
        message = (f"Released {loaded}: the GPU memory held went from {before / 2**20:.0f} MB to "
                   f"{after / 2**20:.0f} MB.")
    show_info(message)
    return message
