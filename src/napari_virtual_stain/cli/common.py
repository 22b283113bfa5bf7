"""Arguments and set-up shared by the subcommands that run a model."""

from __future__ import annotations

import argparse
import math

from ..errors import InputError


def _ints(text: str, minimum: int = 0) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256 or 256,256") from None
    if not values or any(v < minimum for v in values):
        least = "positive" if minimum > 0 else "at least 0"
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256 or 256,256 (each number {least})")
    return values


def sizes(text: str) -> list[int]:
    """A tile or patch size: ``256`` or ``32,256,256``, every number positive."""
    return _ints(text, minimum=1)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1" if minimum == 1 else f"{text} must be 0 or more")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 0 and less than 1")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def cluster_spec(text: str) -> str:
    """``--cluster``'s value, checked as it is read: ``local:N`` or a scheduler address."""
    from ..engine.distributed import parse_cluster

    try:
        parse_cluster(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither local:N (N worker processes here, at least 1) "
                                         "nor a dask scheduler address like tcp://HOST:PORT") from None
    return text


def add_axes_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axes", default=None, metavar="AXES",
                   help="read the input's axes as these letters instead of what the file says, one per axis "
                        "(e.g. CYX for a plain multi-page TIFF whose pages are channels, not z-planes)")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--tile", type=sizes, default=None, help="tile size, e.g. 512 or 32,256,256 (default: the model's)")
    p.add_argument("--overlap", type=_ints, default=None, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="tiles per forward pass (default: automatic)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="arithmetic precision (default: the fastest that stays accurate on this device)")


def _per_axis(values: list[int] | None, ndim: int, what: str) -> list[int] | None:
    if values is None:
        return None
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise InputError(f"The {what} needs {ndim} numbers for this {ndim}D model, not {len(values)}.")
    return values
