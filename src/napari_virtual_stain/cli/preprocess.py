"""Preprocessing from the shell: ``tile-shadow``, ``flatfield``, ``focus`` and ``normalise``.

Each reads a TIFF with :func:`~napari_virtual_stain.io.tiff_reader.load_image`, runs the
core function from :mod:`napari_virtual_stain.preprocess` (or
:mod:`napari_virtual_stain.engine.normalise`), and writes a new TIFF with the same axes,
channel names and pixel size. Corrections are saved in the input's dtype unless
``--float32`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..engine.memory import require_memory
from ..errors import InputError
from ..io.outputs import JSON_OUTPUT_SUFFIXES, OutputTransaction, check_distinct, check_output_file
from .common import add_axes_argument, positive_float, positive_int
from .progress import TextProgress


def register(sub) -> None:
    _register_tile_shadow(sub)
    _register_flatfield(sub)
    _register_focus(sub)
    _register_normalise(sub)


# --------------------------------------------------------------------------- parsers


def _register_tile_shadow(sub) -> None:
    p = sub.add_parser(
        "tile-shadow", help="remove the shadow repeated in every camera tile of a stitched image",
        description="Average the emptiest camera tiles into an 'average artifact' and subtract it "
                    "on the tile grid (paper 000). Each channel gets its own artifact.")
    p.add_argument("input", help="input TIFF (2D, multi-channel, RGB or z-stack)")
    add_axes_argument(p)
    p.add_argument("-o", "--output", required=True, help="corrected TIFF")
    p.add_argument("--tile", required=True, type=_tile_size, help="camera tile size in pixels: 304 or 304,304")
    p.add_argument("--n-empty", type=positive_int, default=None, help="number of emptiest tiles to average")
    p.add_argument("--fraction", type=positive_float, default=0.1,
                   help="fraction of the complete tiles to average when --n-empty is not given (default 0.1)")
    p.add_argument("--criterion", choices=["flat", "dark", "bright"], default="flat",
                   help="what 'empty' means: flat = lowest variation (default), dark = lowest mean, "
                        "bright = highest mean (bright-field)")
    p.add_argument("--tiles", type=_tile_list, default=None,
                   help="explicit empty tiles as 'row,col;row,col' grid indices from the top left (0-based)")
    p.add_argument("--statistic", choices=["mean", "median"], default="mean", help="how tiles are averaged")
    p.add_argument("--remove-background", action="store_true",
                   help="subtract the whole artifact, taking empty areas to zero (as in paper 000); "
                        "by default only the shadow pattern is removed and the background level kept")
    p.add_argument("--strict", action="store_true",
                   help="refuse a tile size that does not divide the image (default: correct partial edge tiles)")
    p.add_argument("--artifact-out", default=None, help="also write the estimated artifact (one tile) here")
    p.add_argument("--float32", action="store_true", help="write float32 instead of the input's dtype")
    p.set_defaults(func=run_tile_shadow)


def _register_flatfield(sub) -> None:
    p = sub.add_parser(
        "flatfield", help="correct uneven illumination with a smooth background estimate",
        description="Estimate a smooth background per plane and divide it out or subtract it, "
                    "keeping each plane's mean intensity.")
    p.add_argument("input", help="input TIFF")
    add_axes_argument(p)
    p.add_argument("-o", "--output", required=True, help="corrected TIFF")
    p.add_argument("--sigma", type=positive_float, default=50.0,
                   help="background smoothing in pixels, larger than the objects (default 50)")
    p.add_argument("--mode", choices=["divide", "subtract"], default="divide",
                   help="divide (illumination shading, default) or subtract (additive haze)")
    p.add_argument("--method", choices=["gaussian", "opening"], default="gaussian",
                   help="gaussian blur (default) or grey opening, which ignores bright objects (fluorescence)")
    p.add_argument("--background-out", default=None, help="also write the estimated background here")
    p.add_argument("--float32", action="store_true", help="write float32 instead of the input's dtype")
    p.set_defaults(func=run_flatfield)


def _register_focus(sub) -> None:
    p = sub.add_parser(
        "focus", help="score the focus of every z-plane (PLLS) and keep the sharpest",
        description="Print the power-spectrum log-log slope (PLLS, paper 002) of every z-plane; "
                    "with -o, write the planes kept.")
    p.add_argument("input", help="input z-stack TIFF")
    add_axes_argument(p)
    p.add_argument("-o", "--output", default=None, help="TIFF with the kept planes (default: only print the scores)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--keep", type=positive_int, default=None, help="keep the N sharpest planes (default 1)")
    group.add_argument("--min-score", type=float, default=None, help="keep the planes at least as sharp as this PLLS")
    p.add_argument("--sharper", choices=["higher", "lower"], default="higher",
                   help="which PLLS is sharper: higher (blur steepens the slope; default) or lower "
                        "(noisy stacks, as paper 002 found; check the printed scores)")
    p.add_argument("--channel", default=None,
                   help="score this channel only (name or index; default: mean over channels)")
    p.add_argument("--band", type=_band, default=None,
                   help="frequency band of the fit in cycles/pixel, e.g. 0.01,0.125 (default: first ring to 0.125)")
    p.set_defaults(func=run_focus)


def _register_normalise(sub) -> None:
    p = sub.add_parser(
        "normalise", help="percentile normalisation per channel (the statistics are printed and can be saved)",
        description="Map each channel's low and high percentiles to 0 and 1, the way the models' "
                    "inputs are normalised. Writes float32.")
    p.add_argument("input", help="input TIFF")
    add_axes_argument(p)
    p.add_argument("-o", "--output", required=True, help="normalised TIFF (float32)")
    p.add_argument("--low", type=float, default=1.0, help="low percentile (default 1)")
    p.add_argument("--high", type=float, default=99.8, help="high percentile (default 99.8)")
    p.add_argument("--clip", action="store_true", help="clip the result to [0, 1]")
    p.add_argument("--stats-out", default=None, help="write the per-channel statistics as JSON here")
    p.set_defaults(func=run_normalise)


# --------------------------------------------------------------------------- runners


def run_tile_shadow(args: argparse.Namespace) -> int:
    from ..workflows import preprocess as workflow

    settings = workflow.TileShadowSettings(
        tile=tuple(args.tile), n_empty=args.n_empty, fraction=args.fraction, criterion=args.criterion,
        statistic=args.statistic, tiles=args.tiles, remove_background=args.remove_background, strict=args.strict,
        float32=args.float32)
    _check_outputs(args, output="output", artifact_out="artifact")
    image, data, axes = _load(args.input, args.axes)
    result = workflow.run(settings, data, axes, name=Path(args.input).name, progress=TextProgress("tile-shadow"))
    tiles = ", ".join(f"({r},{c})" for r, c in result.info["tiles"])
    print(f"averaged {len(result.info['tiles'])} tile(s): {tiles}", file=sys.stderr)
    with OutputTransaction() as tx:
        _save(tx, args.output, result.outputs[workflow.CORRECTED], axes, image)
        if args.artifact_out:
            _save(tx, args.artifact_out, result.outputs[workflow.ARTIFACT], axes, image)
    return 0


def run_flatfield(args: argparse.Namespace) -> int:
    from ..workflows import preprocess as workflow

    settings = workflow.FlatFieldSettings(sigma=args.sigma, mode=args.mode, method=args.method, float32=args.float32)
    _check_outputs(args, output="output", background_out="background")
    image, data, axes = _load(args.input, args.axes)
    result = workflow.run(settings, data, axes, name=Path(args.input).name, progress=TextProgress("flatfield"))
    with OutputTransaction() as tx:
        _save(tx, args.output, result.outputs[workflow.FLAT], axes, image)
        if args.background_out:
            _save(tx, args.background_out, result.outputs[workflow.BACKGROUND], axes, image)
    return 0


def run_focus(args: argparse.Namespace) -> int:
    from ..workflows import preprocess as workflow

    _check_outputs(args, output="output")
    image, data, axes = _load(args.input, args.axes)
    n_channels = data.shape[axes.index("C")] if "C" in axes else data.shape[-1] if axes.endswith("S") else 1
    settings = workflow.FocusSettings(keep=args.keep if args.min_score is None else None, min_score=args.min_score,
                                      sharper=args.sharper, band=args.band,
                                      channel=_channel_index(args.channel, image.channel_names, n_channels))
    result = workflow.run(settings, data, axes, name=Path(args.input).name, progress=TextProgress("focus"))
    _print_scores(result.info, image.extra.get("z_positions_um"))
    if args.output:
        with OutputTransaction() as tx:
            _save(tx, args.output, result.outputs[workflow.IN_FOCUS], axes, image)
    return 0


def run_normalise(args: argparse.Namespace) -> int:
    from ..workflows import preprocess as workflow

    settings = workflow.NormaliseSettings(low=args.low, high=args.high, clip=args.clip)
    settings_problems = settings.problems()
    if settings_problems:  # before any file is read or checked
        raise InputError(settings_problems[0])
    _check_outputs(args, output="output", stats_out="statistics")
    image, data, axes = _load(args.input, args.axes)
    result = workflow.run(settings, data, axes, name=Path(args.input).name, channel_names=image.channel_names)
    record = result.info["normalisation"]
    print(f"{'channel':<16} {'p' + format(args.low, 'g'):>12} {'p' + format(args.high, 'g'):>12}")
    for name, low, high in zip(record["channels"], record["stats"]["low"], record["stats"]["high"]):
        print(f"{name:<16} {low:>12.4g} {high:>12.4g}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with OutputTransaction() as tx:
        _save(tx, args.output, result.outputs[workflow.NORMALISED], axes, image)
        if args.stats_out:
            tx.write_text(args.stats_out, json.dumps(dict(record, source=str(args.input)), indent=2))
    return 0


# --------------------------------------------------------------------------- helpers


def _load(path, axes: str | None = None):
    """Read a file; returns (LoadedImage, numpy data, axes) with a length-1 T axis dropped."""
    from ..io.tiff_reader import load_image

    image = load_image(path, axes=axes)
    # The corrections hold the input, a float32 copy and a result: about three float copies.
    require_memory(3 * 4 * int(np.prod(image.data.shape, dtype=np.int64)), f"Correcting {Path(path).name}",
                   "crop it or process it in parts")
    data, axes = np.asarray(image.data), image.axes
    if "T" in axes:
        t = axes.index("T")
        if data.shape[t] != 1:
            raise InputError(f"{path} is a time series ({data.shape[t]} time points): "
                             "process one time point at a time.")
        data, axes = np.take(data, 0, axis=t), axes.replace("T", "")
    return image, data, axes


def _check_outputs(args: argparse.Namespace, **labels: str) -> None:
    """Check every output a command was given (``{argument: label}``) before any work."""
    paths = {label: getattr(args, arg) for arg, label in labels.items()}
    for label, path in paths.items():
        if path is not None:
            suffixes = JSON_OUTPUT_SUFFIXES if label == "statistics" else None
            kwargs = {"suffixes": suffixes} if suffixes else {}
            check_output_file(path, inputs=[args.input], label=f"{label} file", **kwargs)
    check_distinct({f"{label} file": path for label, path in paths.items()})


def _save(tx: OutputTransaction, path, data, axes: str, image) -> None:
    """Write one TIFF of a command through ``tx`` (moved into place once all are written)."""
    from ..io.tiff_writer import save_tiff

    names = image.channel_names if "C" in axes else None
    save_tiff(tx.stage(path), np.asarray(data), axes, names, image.pixel_size_um)
    print(f"wrote {path}: {axes} {tuple(np.shape(data))} {np.asarray(data).dtype}", file=sys.stderr)


def _print_scores(info: dict, z_positions) -> None:
    """The per-plane table on stdout: plane, z (when the file says), PLLS, rank, kept."""
    from ..preprocess import rank_planes

    scores, sharper = np.asarray(info["plls"], dtype=float), info["sharper"]
    rank = np.empty(scores.shape[0], dtype=int)
    rank[rank_planes(scores, sharper)] = np.arange(1, scores.shape[0] + 1)
    kept = set(info["kept_planes"])
    has_z = z_positions is not None and len(z_positions) == scores.shape[0]
    z_header = f" {'z (um)':>10}" if has_z else ""
    print(f"{'plane':>5}{z_header} {'PLLS':>8} {'rank':>5}  kept")
    for z, score in enumerate(scores):
        shown = "   blank" if np.isnan(score) else f"{score:>8.3f}"
        mark = "yes" if z in kept else ""
        where = f" {z_positions[z]:>10.2f}" if has_z else ""
        print(f"{z:>5}{where} {shown} {rank[z]:>5}  {mark}")
    print(f"sharper = {sharper} PLLS; kept planes: {', '.join(str(i) for i in info['kept_planes'])}")


def _channel_index(wanted: str | None, names: list[str], n_channels: int) -> int | None:
    if wanted is None:
        return None
    if wanted in names:
        return names.index(wanted)
    if wanted.lstrip("-").isdigit() and -n_channels <= int(wanted) < n_channels:
        return int(wanted)
    raise InputError(f"There is no channel {wanted!r} in the file (channels: {', '.join(names) or n_channels}).")


def _tile_size(text: str) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tile size like 304 or 304,304")
    return values[0], values[1]


def _tile_list(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in item.split(",")) for item in text.split(";") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not a tile list like '0,3;2,5'")
    return pairs


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a band like 0.01,0.125") from None
    return low, high
