"""``virtual-stain deepliif-cells IHC.png --seg SEG.png --marker MARKER.png -o OUTDIR``: count cells in maps you have.

The maps are DeepLIIF's own outputs (from ``deepliif test``, deepliif.org, or ``virtual-stain
deepliif``): the fused segmentation (``*_Seg.png``) and the inferred marker (``*_mod4-Marker.png``
or ``*_Marker.png``). No network runs: the cells are found, classified and counted with
deepliif 1.2.7's rules and defaults, and written as ``virtual-stain deepliif`` writes them:
``<stem>_SegRefined.png``, ``<stem>_SegOverlaid.png``, ``<stem>.json`` (num_total, num_pos,
num_neg, percent_pos and the thresholds), ``<stem>_labels.tif``, ``<stem>_cells.csv``,
``<stem>_cells.geojson``, where ``<stem>`` is the IHC file's name without its extension.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..workflows.deepliif_files import pixel_size, read_input
from .deepliif_args import DEEPLIIF_TILE, add_threshold_arguments, cell_settings_from


def register(sub) -> None:
    p = sub.add_parser("deepliif-cells", help="cells, classes and counts from existing DeepLIIF Seg and Marker maps",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="the IHC image the maps came from (8-bit RGB PNG, JPEG or TIFF)")
    p.add_argument("--seg", required=True, help="the fused segmentation map, e.g. ROI_1_Seg.png")
    p.add_argument("--marker", required=True, help="the inferred marker, e.g. ROI_1_mod4-Marker.png or ROI_1_Marker.png")
    p.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    p.add_argument("--tile-size", type=int, default=DEEPLIIF_TILE,
                   help=f"the tile size deepliif ran with; only sets the magnification rule (default {DEEPLIIF_TILE})")
    add_threshold_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.outputs import StagedOutputs, check_output_folder
    from ..tasks.deepliif_files import write_cell_files
    from ..workflows import deepliif as workflow

    settings = cell_settings_from(args, args.tile_size)  # the settings the dock's "Count existing maps" uses
    settings.validate_cells()
    out_dir = check_output_folder(args.output, inputs=[args.input, args.seg, args.marker])
    stem = Path(args.input).stem
    names = (Path(args.input).name, Path(args.seg).name, Path(args.marker).name)
    ihc, image = read_input(args.input, names[0])
    seg, _ = read_input(args.seg, names[1])
    marker, _ = read_input(args.marker, names[2])
    result = workflow.count_maps(ihc, seg, marker, names, settings)
    classes = result.cells.classify(settings.thresholds())
    with StagedOutputs(out_dir) as out:
        info = write_cell_files(out.path, stem, result.cells, classes, {"seg": str(args.seg), "marker": str(args.marker)},
                                ihc=ihc, pixel_size_um=pixel_size(image))
    print(f"{stem}: {info['num_total']} cells, {info['num_pos']} positive, {info['num_neg']} negative, "
          f"{info['percent_pos']:.1f}% positive -> {out_dir}", file=sys.stderr)
    return 0
