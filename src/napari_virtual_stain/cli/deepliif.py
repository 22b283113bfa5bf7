"""``virtual-stain deepliif IN.png -o OUTDIR``: DeepLIIF from the shell, file for file like DeepLIIF's tools.

Writes into OUTDIR, for an input ``ROI_1.png``:

- ``ROI_1_Hema.png``, ``ROI_1_DAPI.png``, ``ROI_1_Lap2.png``, ``ROI_1_Marker.png``: the inferred modalities;
- ``ROI_1_Seg.png``: the fused segmentation; ``ROI_1_SegRefined.png`` and ``ROI_1_SegOverlaid.png``:
  the classified cells as deepliif draws them (red positive, blue negative, green borders);
- ``ROI_1_labels.tif``: the cell label image (0 background; excluded cells kept, see the table);
- ``ROI_1_cells.csv`` and ``ROI_1_cells.geojson``: the per-cell table and polygons;
- ``ROI_1.json``: deepliif's scoring (num_total, num_pos, num_neg, percent_pos, the thresholds).

The cell thresholds and their defaults are deepliif 1.2.7's (seg 120, automatic size rule, no
marker rule, magnification from the tile size). All arguments, the input image and the output
folder are checked before any network runs; the files appear together at the end, or not at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import _ints
from .deepliif_args import add_threshold_arguments
from .progress import TextProgress

FILE_SUFFIX = {"Hematoxylin": "Hema", "DAPI": "DAPI", "Lap2": "Lap2", "Marker": "Marker", "Segmentation": "Seg"}


def register(sub) -> None:
    p = sub.add_parser("deepliif", help="IHC image -> mpIF modalities, classified cells and counts (DeepLIIF)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="brightfield IHC image: PNG, JPEG or TIFF, 8-bit RGB")
    p.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    p.add_argument("--model", default="deepliif-small",
                   help="model name, .pt file, a DeepLIIF release folder (G1.pt..G55.pt + train_opt.txt) or a "
                        "bioimage.io package exported from a DeepLIIF model")
    p.add_argument("--tile", type=_ints, default=None, help="tile size (default: the model's)")
    p.add_argument("--overlap", type=_ints, default=None, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default fp32: bf16 moves segmentation pixels across the threshold and changes cell "
                        "counts by a few percent (bench/RESULTS.md)")
    add_threshold_arguments(p)
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace):
    """The workflow's settings for these arguments (what the DeepLIIF dock builds from its fields)."""
    from ..workflows.deepliif import DeepLIIFSettings

    return DeepLIIFSettings(model=args.model, device=args.device, precision=args.precision,
                            tile=tuple(args.tile) if args.tile else None,
                            overlap=tuple(args.overlap) if args.overlap else None,
                            seg_threshold=args.seg_thresh, size=args.size_thresh, size_upper=args.size_thresh_upper,
                            marker=args.marker_thresh, resolution=args.resolution)


def read_input(path: str, name: str):
    """The input image as (Y, X, 3) uint8 data (lazy for big TIFFs), checked, and its LoadedImage."""
    from ..io.tiff_reader import load_image
    from ..tasks.deepliif import MIN_SIDE, as_rgb8

    image = load_image(path)
    data = image.data
    if image.axes == "CYX" and data.shape[0] in (3, 4):  # a TIFF storing colour as channels
        data = np.moveaxis(np.asarray(data), 0, -1)
    data = as_rgb8(data, name)
    if min(data.shape[:2]) < MIN_SIDE:
        raise InputError(f"{Path(path).name} is only {data.shape[1]} x {data.shape[0]} pixels; DeepLIIF needs at "
                         f"least {MIN_SIDE} x {MIN_SIDE} to find cells.")
    return data, image


def run(args: argparse.Namespace) -> int:
    from ..io.outputs import StagedOutputs, check_output_folder
    from ..tasks.deepliif import needs_store
    from ..tasks.deepliif_files import write_cell_files, write_png
    from ..workflows import deepliif as workflow

    # Everything the user gave is checked before any network runs or any file is written.
    settings = settings_from(args)
    settings.validate()
    out_dir = check_output_folder(args.output, inputs=[args.input])
    stem = Path(args.input).stem
    data, image = read_input(args.input, stem)
    predictor = workflow.predictor_for(settings)  # loads the model: a wrong release folder is said here
    print(f"{args.input}: {tuple(data.shape)} {data.dtype} -> {predictor.card.name}", file=sys.stderr)
    with StagedOutputs(out_dir) as out:
        store = out.path(f"{stem}.zarr") if needs_store(data.shape[:2]) else None
        t0 = time.perf_counter()
        result = workflow.run(settings, data, name=stem, store=store, analyse=False, progress=TextProgress("deepliif"))
        t1 = time.perf_counter()
        cells = result.analyse(settings.seg_threshold, settings.resolution_for(
            settings.tile[0] if settings.tile else predictor.card.tile[0]))
        classes = cells.classify(settings.thresholds())
        t2 = time.perf_counter()
        for name, suffix in FILE_SUFFIX.items():
            write_png(out.path(f"{stem}_{suffix}.png"), result.images[name])
        info = {"model": predictor.card.name,
                "region": {"start": list(result.region.start), "stop": list(result.region.stop)},
                "timing_s": {"networks": round(t1 - t0, 3), "cells": round(t2 - t1, 3)}}
        info = write_cell_files(out.path, stem, cells, classes, info, ihc=data, pixel_size_um=pixel_size(image))
    print(f"{stem}: {info['num_total']} cells, {info['num_pos']} positive, {info['num_neg']} negative, "
          f"{info['percent_pos']:.1f}% positive -> {out_dir}", file=sys.stderr)
    return 0


def pixel_size(image) -> float | None:
    size = image.pixel_size_um
    if size is None:
        return None
    values = [v for v in (size if isinstance(size, (list, tuple)) else [size]) if v]
    return float(values[-1]) if values else None
