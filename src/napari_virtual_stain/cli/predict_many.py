"""``virtual-stain predict`` on many inputs: a folder, a glob, several files or an HCS plate, here or on a cluster.

Kept apart from ``predict.py`` so that command keeps its one-file path; ``predict`` hands over
here when :func:`wants_scale_out` says so.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from ..io.ome_zarr_reader import ZARR_SUFFIXES, is_zarr_folder
from .common import cluster_spec, positive_int
from .progress import TextProgress


def add_scale_out_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("more_inputs", nargs="*", metavar="MORE",
                   help="more inputs: with several inputs, a folder, a glob ('fields/*.tif') or an HCS plate "
                        "(.zarr), -o is a folder that receives one output per input")
    p.add_argument("--cluster", type=cluster_spec, default=None, metavar="WHERE",
                   help="run one task per input on local:N (N worker processes here) or tcp://HOST:PORT "
                        "(an existing dask scheduler; workers need this package and the model's file)")
    p.add_argument("--band-rows", type=positive_int, default=None, metavar="N",
                   help="cut one big 2D image into bands of N rows, one task each (with --cluster, bands run "
                        "on several workers); the output equals a one-process run")
    p.add_argument("--output-format", default="tiff", choices=["tiff", "ome-zarr"],
                   help="what each output of a many-input run is (default: tiff); "
                        "an -o ending in .ome.zarr writes OME-Zarr for one input, or for an HCS plate "
                        "one output plate of the same wells and fields")


def wants_scale_out(args: argparse.Namespace) -> bool:
    """True for anything but one image file written as one TIFF in this process."""
    if args.more_inputs or args.cluster or args.band_rows is not None or str(args.output).lower().rstrip("/").endswith(ZARR_SUFFIXES):
        return True
    source = Path(str(args.input)).expanduser()
    if not source.exists():  # a pattern, or a missing file the one-file path reports
        return glob.has_magic(str(args.input))
    return source.is_dir() and not (is_zarr_folder(source) and not _is_plate(source))


def _is_plate(path: Path) -> bool:
    from ..io.ome_zarr_reader import is_plate

    return is_plate(path)


def predict_many(args: argparse.Namespace) -> int:
    from ..workflows import stain as workflow
    from ..workflows.stain_files import expand_inputs, plan_outputs, stain_many

    settings = workflow.StainSettings(model=args.model, device=args.device, precision=args.precision,
                                      tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, tta=args.tta)
    settings.validate()
    from ..io.ome_zarr_plate_writer import wants_plate_output

    if wants_plate_output([args.input, *args.more_inputs], args.output):
        return _predict_plate(settings, args)
    sources = expand_inputs([args.input, *args.more_inputs])
    pairs = plan_outputs(sources, args.output, args.output_format, model=args.model, overwrite=args.overwrite)
    where = args.cluster or "this process"
    if args.band_rows is not None:
        from ..errors import InputError
        from ..workflows.stain_bands import stain_in_bands

        if len(pairs) != 1:
            raise InputError(f"--band-rows cuts one image into bands; {len(pairs)} inputs were given "
                             "(many inputs already run one task each).")
        print(f"{pairs[0][0]} in bands of {args.band_rows} rows -> {pairs[0][1]} on {where}", file=sys.stderr)
        results = [stain_in_bands(settings, *pairs[0], args.band_rows, cluster=args.cluster, channel=args.channel,
                                  axes=args.axes, progress=TextProgress("predict"))]
    else:
        print(f"{len(pairs)} input(s) -> {args.output} on {where}", file=sys.stderr)
        results = stain_many(settings, pairs, cluster=args.cluster, channel=args.channel, axes=args.axes,
                             progress=TextProgress("predict"))
    for result in results:
        for warning in result["warnings"]:
            print(f"warning: {Path(result['input']).name}: {warning}", file=sys.stderr)
    print(f"wrote {len(results)} output(s) to {args.output}", file=sys.stderr)
    return 0


def _predict_plate(settings, args: argparse.Namespace) -> int:
    """An HCS plate in, one plate out (-o ending in .zarr): the same wells and fields, one task per field."""
    from ..errors import InputError
    from ..workflows.stain_files import stain_plate

    if args.band_rows is not None:
        raise InputError("--band-rows cuts one image into bands; a plate runs one task per field instead.")
    where = args.cluster or "this process"
    print(f"plate {args.input} -> plate {args.output} on {where}", file=sys.stderr)
    results = stain_plate(settings, args.input, args.output, cluster=args.cluster, channel=args.channel,
                          axes=args.axes, progress=TextProgress("predict"))
    for result in results:
        for warning in result["warnings"]:
            print(f"warning: {result['input']}: {warning}", file=sys.stderr)
    print(f"wrote a plate of {len(results)} field(s) to {args.output}", file=sys.stderr)
    return 0
