"""Arguments and set-up shared by the subcommands that run a model."""

from __future__ import annotations

import argparse

from ..errors import InputError


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256 or 256,256") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256 or 256,256")
    return values


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--tile", type=_ints, default=None, help="tile size, e.g. 512 or 32,256,256 (default: the model's)")
    p.add_argument("--overlap", type=_ints, default=None, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: automatic)")
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


def make_predictor(args: argparse.Namespace):
    from ..engine.predictor import Predictor
    from ..models.registry import load_model

    model, card = load_model(args.model)
    tile = _per_axis(args.tile, card.spatial_dims, "tile size")
    overlap = _per_axis(args.overlap, card.spatial_dims, "overlap")
    if tile and overlap and any(o >= t for o, t in zip(overlap, tile)):
        raise InputError("The overlap must be smaller than the tile.")
    return Predictor(model, card, device=args.device, tile=tile, overlap=overlap,
                     batch_size=args.batch_size, precision=args.precision)
