"""Architectures by name, so a model card can say what to build without pickling code."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import CheckpointError, plain_text

# name -> constructor(**arch_args). Modules add themselves with @register.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


# name -> function(state_dict) -> state_dict: maps the weight names of checkpoints written by
# earlier versions of an architecture onto today's, so old model files keep loading.
STATE_UPGRADES: dict[str, Callable[[dict], dict]] = {}


def register_state_upgrade(name: str):
    def wrap(function):
        STATE_UPGRADES[name] = function
        return function
    return wrap


def upgrade_state(architecture: str, state: dict) -> dict:
    """``state`` with the weight names today's ``architecture`` uses."""
    _load_builtin_architectures()
    upgrade = STATE_UPGRADES.get(architecture)
    return upgrade(state) if upgrade is not None else state


def register(name: str):
    def wrap(cls):
        ARCHITECTURES[name] = cls
        return cls
    return wrap


def _load_builtin_architectures() -> None:
    # Imported for their @register side effect; kept here so that importing the
    # factory is enough to know every architecture.
    from . import unet, unet25d, resnet, patchgan  # noqa: F401
    for optional in ("pix2pix_unet", "pix2pixhd", "transunet", "deepliif_net", "deepliif_unet"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{optional}":
                raise


# Networks above this many parameters are refused before any memory is spent on them: the
# largest architecture offered (pix2pixHD's generator) has about 180 M; a typo in a width
# (base 32000) or a forged card would otherwise take gigabytes before anything is checked.
MAX_PARAMETERS = 500_000_000

# What constructors raise for arguments that cannot work (depth 0, a width of 0, a string
# where a number belongs): all mean "these arguments do not fit the architecture".
_BAD_ARGUMENT_ERRORS = (TypeError, ValueError, ZeroDivisionError, AssertionError, IndexError, KeyError, RuntimeError)


def _constructor(architecture: str):
    _load_builtin_architectures()
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"The model needs the architecture {architecture!r}, which this version of "
            f"napari-virtual-stain does not know (known: {', '.join(sorted(ARCHITECTURES))})."
        )
    return ARCHITECTURES[architecture]


def _construct(architecture: str, arch_args, error=CheckpointError) -> torch.nn.Module:
    if not isinstance(arch_args, dict) or not all(isinstance(k, str) for k in arch_args):
        raise error(f"The arguments for {architecture!r} must be a mapping of names to values, not {arch_args!r}.")
    try:
        return _constructor(architecture)(**arch_args)
    except _BAD_ARGUMENT_ERRORS as err:
        message = plain_text(err, 200) or type(err).__name__
        raise error(f"The arguments {arch_args} do not fit the architecture {architecture!r}: {message}.") from None


def plan_model(architecture: str, arch_args: dict, error=CheckpointError) -> torch.nn.Module:
    """The network with its parameters on the ``meta`` device: shapes and counts, no memory.

    Raises ``error`` (CheckpointError for a card, InputError for the user's own arguments)
    for an unknown architecture, arguments it cannot take, or more than MAX_PARAMETERS.
    """
    with torch.device("meta"):
        model = _construct(architecture, arch_args, error)
    sizes = [p.numel() for p in model.parameters()]
    if 0 in sizes:
        raise error(f"The arguments {arch_args} make {architecture!r} a network with layers without weights "
                    "(a width or channel count of 0?): every width must be at least 1.")
    n = sum(sizes)
    if n > MAX_PARAMETERS:
        raise error(f"The arguments {arch_args} make {architecture!r} a network of {n / 1e6:,.0f} million parameters "
                    f"(over {MAX_PARAMETERS // 1_000_000} million, {n * 4 / 2**30:.1f} GB): use smaller widths or depth.")
    return model


def build_model(architecture: str, arch_args: dict, error=CheckpointError) -> torch.nn.Module:
    """Build an untrained network named by a model card (checked on the meta device first)."""
    plan_model(architecture, arch_args, error)
    return _construct(architecture, arch_args, error)
