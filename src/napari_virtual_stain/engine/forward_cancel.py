"""Cancel inside one forward pass: one big tile through a deep network stops within a layer or two."""

from __future__ import annotations

import contextlib
import threading

import torch

from ..errors import check_cancel


@contextlib.contextmanager
def cancel_inside_forward(model: torch.nn.Module, cancel: threading.Event | None):
    """Check ``cancel`` before every submodule's forward while the block runs.

    The hooks act only in the thread that runs this prediction (another thread may use
    the same model at the same time) and are removed afterwards, also when the run
    fails or is cancelled, so the model is left exactly as it was. TorchScript modules
    take no hooks: for them cancel is checked between batches only.
    """
    if cancel is None:
        yield
        return
    thread = threading.get_ident()

    def hook(module, args):
        if cancel.is_set() and threading.get_ident() == thread:
            check_cancel(cancel)

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue
            try:
                handles.append(module.register_forward_pre_hook(hook))
            except (RuntimeError, AttributeError, TypeError):
                continue
        yield
    finally:
        for handle in handles:
            handle.remove()
