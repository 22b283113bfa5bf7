"""``virtual-stain deepliif IN.png -o OUTDIR``: DeepLIIF from the shell, file for file like DeepLIIF's tools.

Writes into OUTDIR, for an input ``ROI_1.png``:

- ``ROI_1_Hema.png``, ``ROI_1_DAPI.png``, ``ROI_1_Lap2.png``, ``ROI_1_Marker.png``: the inferred modalities;
- ``ROI_1_Seg.png``: the fused segmentation; ``ROI_1_SegRefined.png`` and ``ROI_1_SegOverlaid.png``:
  the classified cells as deepliif draws them (red positive, blue negative, green borders);
- ``ROI_1_labels.tif``: the cell label image (0 background; excluded cells kept, see the table);
- ``ROI_1_cells.csv`` and ``ROI_1_cells.geojson``: the per-cell table and polygons;
- ``ROI_1.json``: deepliif's scoring (num_total, num_pos, num_neg, percent_pos, the thresholds).

The cell thresholds are deepliif 1.2.7's (seg 120, automatic size rule, no marker rule,
magnification from the tile size), except that a threshold not given is the model's own where its
card carries one (the bundled ``deepliif-small``: seg 100, size 60, chosen on its training rows). All arguments, the input image and the output
folder are checked before any network runs; the files appear together at the end, or not at all.

Several inputs, a folder or a glob (``virtual-stain deepliif slides/*.png -o OUT``) write each
input's files into OUT, one task per input, here or with ``--cluster local:N`` / ``tcp://HOST:PORT``
on dask.distributed workers (each loads the model once).
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import asdict
from pathlib import Path

from .common import _ints, cluster_spec
from .deepliif_args import add_threshold_arguments
from .progress import TextProgress


def register(sub) -> None:
    p = sub.add_parser("deepliif", help="IHC image -> mpIF modalities, classified cells and counts (DeepLIIF)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="brightfield IHC image: PNG, JPEG or TIFF, 8-bit RGB; or a folder or a glob")
    p.add_argument("more_inputs", nargs="*", metavar="MORE", help="more IHC images (each writes its own files)")
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
    p.add_argument("--cluster", type=cluster_spec, default=None, metavar="WHERE",
                   help="one task per input on local:N (N worker processes here) or tcp://HOST:PORT (an existing "
                        "dask scheduler; workers need this package and the model)")
    add_threshold_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an input's files already in the output folder")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace):
    """The workflow's settings for these arguments (what the DeepLIIF dock builds from its fields)."""
    from ..workflows.deepliif import DeepLIIFSettings

    return DeepLIIFSettings(model=args.model, device=args.device, precision=args.precision,
                            tile=tuple(args.tile) if args.tile else None,
                            overlap=tuple(args.overlap) if args.overlap else None,
                            seg_threshold=args.seg_thresh, size=args.size_thresh, size_upper=args.size_thresh_upper,
                            marker=args.marker_thresh, resolution=args.resolution, split=args.split_nuclei,
                            grow=args.grow_cells, positive_from=args.positive_from)


def run(args: argparse.Namespace) -> int:
    from ..io.outputs import check_output_folder
    from ..workflows.deepliif_files import deepliif_file, plan_inputs

    # Everything the user gave is checked before any network runs or any file is written.
    settings = settings_from(args)
    settings.validate()
    if wants_scale_out(args):
        return run_many(args, settings)
    out_dir = check_output_folder(args.output, inputs=[args.input])
    plan_inputs([(Path(args.input), Path(args.input).stem)], out_dir, overwrite=args.overwrite)
    info = deepliif_file(args.input, str(out_dir), asdict(settings), progress=TextProgress("deepliif"),
                         log=lambda line: print(line, file=sys.stderr))
    _say(info, out_dir)
    return 0


def _say(info: dict, out_dir) -> None:
    print(f"{info['stem']}: {info['num_total']} cells, {info['num_pos']} positive, {info['num_neg']} negative, "
          f"{info['percent_pos']:.1f}% positive -> {out_dir}", file=sys.stderr)


def wants_scale_out(args: argparse.Namespace) -> bool:
    """Several inputs, a folder or a pattern, or a cluster: one task per input."""
    if args.more_inputs or args.cluster:
        return True
    source = Path(str(args.input)).expanduser()
    return source.is_dir() if source.exists() else glob.has_magic(str(args.input))


def run_many(args: argparse.Namespace, settings) -> int:
    from ..workflows.deepliif_files import deepliif_many
    from ..workflows.stain_files import expand_inputs

    sources = expand_inputs([args.input, *args.more_inputs])
    print(f"{len(sources)} IHC image(s) -> {args.output} on {args.cluster or 'this process'}", file=sys.stderr)
    results = deepliif_many(settings, sources, args.output, cluster=args.cluster, progress=TextProgress("deepliif"),
                            overwrite=args.overwrite)
    for info in results:
        _say(info, args.output)
    return 0
