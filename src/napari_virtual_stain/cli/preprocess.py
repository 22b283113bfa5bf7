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
    from ..preprocess import cast_like, correct_tile_shadow

    _check_outputs(args, output="output", artifact_out="artifact")
    image, data, axes = _load(args.input, args.axes)
    core, restore = _channels_first(data, axes)
    result = correct_tile_shadow(
        core, args.tile, tiles=args.tiles, n_empty=args.n_empty, fraction=args.fraction,
        criterion=args.criterion, statistic=args.statistic, remove_background=args.remove_background,
        strict=args.strict, progress=TextProgress("tile-shadow"))
    tiles = ", ".join(f"({r},{c})" for r, c in result.tiles)
    print(f"averaged {len(result.tiles)} tile(s): {tiles}", file=sys.stderr)
    out = restore(result.corrected)
    with OutputTransaction() as tx:
        _save(tx, args.output, out if args.float32 else cast_like(out, data.dtype), axes, image)
        if args.artifact_out:
            _save(tx, args.artifact_out, restore(result.artifact), axes, image)
    return 0


def run_flatfield(args: argparse.Namespace) -> int:
    from ..preprocess import cast_like, correct_flatfield

    _check_outputs(args, output="output", background_out="background")
    image, data, axes = _load(args.input, args.axes)
    core, restore = _channels_first(data, axes)
    result = correct_flatfield(core, sigma=args.sigma, mode=args.mode, method=args.method,
                               progress=TextProgress("flatfield"))
    out = restore(result.corrected)
    with OutputTransaction() as tx:
        _save(tx, args.output, out if args.float32 else cast_like(out, data.dtype), axes, image)
        if args.background_out:
            _save(tx, args.background_out, restore(result.background), axes, image)
    return 0


def run_focus(args: argparse.Namespace) -> int:
    from ..preprocess import select_in_focus
    from ..preprocess.focus import DEFAULT_BAND

    _check_outputs(args, output="output")
    image, data, axes = _load(args.input, args.axes)
    if "Z" not in axes:
        raise InputError(f"{args.input} has no z axis (axes {axes}): focus selection needs a z-stack.")
    core, restore = _channels_first(data, axes)
    if core.ndim == 5:  # (C, Z, Y, X) after an RGB stack's samples moved first; nothing else has 5
        raise InputError(f"{args.input} has axes {axes}: a (Z, Y, X) or (C, Z, Y, X) stack is needed.")
    channel = _channel_index(args.channel, image.channel_names, core.shape[0] if core.ndim == 4 else 1)
    band = args.band if args.band is not None else DEFAULT_BAND
    result = select_in_focus(core, keep=args.keep, min_score=args.min_score, sharper=args.sharper,
                             band=band, channel=channel, progress=TextProgress("focus"))
    _print_scores(result, image.extra.get("z_positions_um"))
    if args.output:
        with OutputTransaction() as tx:
            _save(tx, args.output, restore(result.planes), axes, image)
    return 0


def run_normalise(args: argparse.Namespace) -> int:
    from ..engine.normalise import compute_stats, flat_channels_warning, normalise

    if not 0 <= args.low < args.high <= 100:
        raise InputError(f"The percentiles must satisfy 0 <= low < high <= 100, not {args.low} and {args.high}.")
    _check_outputs(args, output="output", stats_out="statistics")
    image, data, axes = _load(args.input, args.axes)
    core, restore = _channels_first(data, axes)
    grey = "C" not in axes and "S" not in axes  # one channel: give it a channel axis for the stats
    core = core[None] if grey else core
    spec = {"kind": "percentile", "low": args.low, "high": args.high, "clip": bool(args.clip)}
    stats = compute_stats(core, spec)
    normalised = normalise(core, spec, stats)
    names = image.channel_names or [f"C{i}" for i in range(core.shape[0])]
    print(f"{'channel':<16} {'p' + format(args.low, 'g'):>12} {'p' + format(args.high, 'g'):>12}")
    for name, low, high in zip(names, stats["low"], stats["high"]):
        print(f"{name:<16} {low:>12.4g} {high:>12.4g}")
    warning = flat_channels_warning(stats, names)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    with OutputTransaction() as tx:
        _save(tx, args.output, normalised[0] if grey else restore(normalised), axes, image)
        if args.stats_out:
            record = {"spec": spec, "stats": stats, "channels": names, "source": str(args.input)}
            tx.write_text(args.stats_out, json.dumps(record, indent=2))
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


def _channels_first(data: np.ndarray, axes: str):
    """The core's layout (RGB samples moved first) and the function that undoes it."""
    if axes.endswith("S"):
        return np.moveaxis(data, -1, 0), lambda a: np.moveaxis(np.asarray(a), 0, -1)
    return data, np.asarray


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


def _print_scores(result, z_positions) -> None:
    """The per-plane table on stdout: plane, z (when the file says), PLLS, rank, kept."""
    from ..preprocess import rank_planes

    rank = np.empty(result.scores.shape[0], dtype=int)
    rank[rank_planes(result.scores, result.sharper)] = np.arange(1, result.scores.shape[0] + 1)
    kept = set(result.indices.tolist())
    has_z = z_positions is not None and len(z_positions) == result.scores.shape[0]
    z_header = f" {'z (um)':>10}" if has_z else ""
    print(f"{'plane':>5}{z_header} {'PLLS':>8} {'rank':>5}  kept")
    for z, score in enumerate(result.scores):
        shown = "   blank" if np.isnan(score) else f"{score:>8.3f}"
        mark = "yes" if z in kept else ""
        where = f" {z_positions[z]:>10.2f}" if has_z else ""
        print(f"{z:>5}{where} {shown} {rank[z]:>5}  {mark}")
    print(f"sharper = {result.sharper} PLLS; kept planes: {', '.join(str(i) for i in result.indices)}")


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
