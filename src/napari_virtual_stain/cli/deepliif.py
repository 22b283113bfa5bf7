"""``virtual-stain deepliif IN.png -o OUTDIR``: DeepLIIF from the shell, file for file like DeepLIIF's tools.

Writes into OUTDIR, for an input ``ROI_1.png``:

- ``ROI_1_Hema.png``, ``ROI_1_DAPI.png``, ``ROI_1_Lap2.png``, ``ROI_1_Marker.png``: the inferred modalities;
- ``ROI_1_Seg.png``: the fused segmentation; ``ROI_1_SegRefined.png``: the classified mask
  (red positive, blue negative, green borders, black background), same size as the input;
- ``ROI_1_labels.tif``: the cell label image (0 background; excluded cells kept, see the table);
- ``ROI_1_cells.csv`` and ``ROI_1_cells.geojson``: the per-cell table and polygons;
- ``ROI_1.json``: counts, percent positive and the thresholds used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import _ints, _per_axis
from .progress import TextProgress

FILE_SUFFIX = {"Hematoxylin": "Hema", "DAPI": "DAPI", "Lap2": "Lap2", "Marker": "Marker", "Segmentation": "Seg"}


def _auto_or_int(text: str):
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None


def register(sub) -> None:
    p = sub.add_parser("deepliif", help="IHC image -> mpIF modalities, classified cells and counts (DeepLIIF)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="brightfield IHC image: PNG, JPEG or TIFF, 8-bit RGB")
    p.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    p.add_argument("--model", default="deepliif-small",
                   help="model name, .pt file, or a DeepLIIF release folder (G1.pt..G55.pt + train_opt.txt)")
    p.add_argument("--tile", type=_ints, default=None, help="tile size (default: the model's)")
    p.add_argument("--overlap", type=_ints, default=None, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default fp32: bf16 moves segmentation pixels across the threshold and changes cell "
                        "counts by a few percent (bench/RESULTS.md)")
    p.add_argument("--seg-thresh", type=int, default=150, help="segmentation threshold, red + blue, 0-510 (default 150)")
    p.add_argument("--size-thresh", type=_auto_or_int, default=None, help="minimum cell area in pixels or 'auto'")
    p.add_argument("--size-thresh-upper", type=int, default=None, help="maximum cell area in pixels")
    p.add_argument("--marker-thresh", type=_auto_or_int, default=None, help="marker threshold 0-255 or 'auto'")
    p.add_argument("--resolution", default="40x", choices=["40x", "20x", "10x"],
                   help="scan magnification, for the automatic size threshold (default 40x)")
    p.set_defaults(func=run)


def _write_png(path: Path, rgb) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.asarray(rgb))


def make_deepliif_predictor(args: argparse.Namespace):
    from ..engine.predictor import Predictor
    from ..tasks.deepliif import load_deepliif_model

    model, card = load_deepliif_model(args.model)
    tile = _per_axis(args.tile, 2, "tile size")
    overlap = _per_axis(args.overlap, 2, "overlap")
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    if tile and any(t % multiple for t in tile):
        raise InputError(f"The model '{card.name}' needs tiles that are a multiple of {multiple} pixels, not {tile}.")
    if tile and overlap and any(o >= t for o, t in zip(overlap, tile)):
        raise InputError("The overlap must be smaller than the tile.")
    return Predictor(model, card, device=args.device, tile=tile, overlap=overlap, precision=args.precision)


def run(args: argparse.Namespace) -> int:
    from ..io.tiff_reader import load_image
    from ..tasks.deepliif import (cell_polygons, cell_rows, needs_store, run_deepliif, summary, write_csv,
                                  write_geojson)
    from ..tasks.deepliif_cells import Thresholds, render_classified_mask

    predictor = make_deepliif_predictor(args)
    image = load_image(args.input)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.input).stem
    data = image.data
    if image.axes == "CYX" and data.shape[0] in (3, 4):  # a TIFF storing colour as channels
        data = np.moveaxis(np.asarray(data), 0, -1)
    store = out_dir / f"{stem}.zarr" if getattr(data, "ndim", 0) >= 2 and needs_store(data.shape[:2]) else None
    print(f"{args.input}: {tuple(data.shape)} {data.dtype} -> {predictor.card.name}", file=sys.stderr)
    t0 = time.perf_counter()
    result = run_deepliif(predictor, data, name=stem, store=store, analyse=False,
                          progress=TextProgress("deepliif"))
    t1 = time.perf_counter()
    cells = result.analyse(args.seg_thresh, args.resolution)
    classes = cells.classify(Thresholds(args.seg_thresh, args.size_thresh, args.size_thresh_upper, args.marker_thresh))
    t2 = time.perf_counter()
    for name, suffix in FILE_SUFFIX.items():
        _write_png(out_dir / f"{stem}_{suffix}.png", result.images[name])
    _write_png(out_dir / f"{stem}_SegRefined.png", render_classified_mask(cells, classes))
    import tifffile

    tifffile.imwrite(out_dir / f"{stem}_labels.tif", cells.labels, compression="zlib")
    rows = cell_rows(cells, classes, pixel_size_um=_pixel_size(image))
    write_csv(out_dir / f"{stem}_cells.csv", rows)
    write_geojson(out_dir / f"{stem}_cells.geojson", cell_polygons(cells, classes))
    info = summary(classes, predictor.card, result.region)
    info["timing_s"] = {"networks": round(t1 - t0, 3), "cells": round(t2 - t1, 3)}
    (out_dir / f"{stem}.json").write_text(json.dumps(info, indent=1))
    print(f"{stem}: {info['num_total']} cells, {info['num_pos']} positive, {info['num_neg']} negative, "
          f"{info['percent_pos']:.1f}% positive -> {out_dir}", file=sys.stderr)
    return 0


def _pixel_size(image) -> float | None:
    size = image.pixel_size_um
    if size is None:
        return None
    values = [v for v in (size if isinstance(size, (list, tuple)) else [size]) if v]
    return float(values[-1]) if values else None
