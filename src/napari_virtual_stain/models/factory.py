"""Architectures by name, so a model card can say what to build without pickling code."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import CheckpointError

# name -> constructor(**arch_args). Modules add themselves with @register.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


def register(name: str):
    def wrap(cls):
        ARCHITECTURES[name] = cls
        return cls
    return wrap


def _load_builtin_architectures() -> None:
    # Imported for their @register side effect; kept here so that importing the
    # factory is enough to know every architecture.
    from . import unet, resnet, patchgan  # noqa: F401
    for optional in ("pix2pix_unet", "pix2pixhd", "transunet", "deepliif_net"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{optional}":
                raise


def build_model(architecture: str, arch_args: dict) -> torch.nn.Module:
    """Build an untrained network named by a model card."""
    _load_builtin_architectures()
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"The model needs the architecture {architecture!r}, which this version of "
            f"napari-virtual-stain does not know (known: {', '.join(sorted(ARCHITECTURES))})."
        )
    try:
        return ARCHITECTURES[architecture](**arch_args)
    except TypeError as err:
        raise CheckpointError(f"The arguments stored for {architecture!r} do not fit it: {err}.") from err
