"""The cell-threshold arguments of ``virtual-stain deepliif`` and ``deepliif-cells``: deepliif's names and defaults.

deepliif 1.2.7 counts with ``seg_thresh=120``, ``size_thresh='default'`` (its automatic rule),
no upper size and no marker rule, at the magnification its tile size implies (40x for 512).
A threshold not given is the model's: the values its card carries (the bundled ``deepliif-small``'s
were chosen on its training rows), deepliif's for a release folder and for maps (``deepliif-cells``).
"""

from __future__ import annotations

import argparse

from ..tasks.deepliif_cells import AUTO, MODEL, RESOLUTIONS, SEG_THRESHOLD_DEFAULT
from ..tasks.deepliif_dab_vote import POSITIVE_FROM
from ..workflows.deepliif import DEEPLIIF_TILE, DeepLIIFSettings


def _whole(text: str):
    if text.lower() == MODEL:
        return MODEL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _size(text: str):
    if text.lower() in ("auto", "default"):
        return AUTO
    return _whole(text)


def _upper(text: str):
    if text.lower() in ("none", "off"):
        return None
    return _whole(text)


def _marker(text: str):
    lowered = text.lower()
    if lowered in ("auto", "default"):
        return AUTO
    if lowered in ("none", "off"):
        return None
    return _whole(text)


def add_threshold_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seg-thresh", type=_whole, default=MODEL,
                   help="segmentation threshold, red + blue, 0-510 (default: the model's; deepliif's "
                        f"{SEG_THRESHOLD_DEFAULT} for release folders and maps)")
    p.add_argument("--size-thresh", type=_size, default=MODEL,
                   help="minimum cell area in pixels, or 'default' (deepliif's automatic rule); default: the "
                        "model's (deepliif's automatic rule for release folders and maps)")
    p.add_argument("--size-thresh-upper", type=_upper, default=MODEL,
                   help="maximum cell area in pixels, or 'none'; default: the model's (none for release folders "
                        "and maps)")
    p.add_argument("--marker-thresh", type=_marker, default=MODEL,
                   help="a cell whose brightest marker pixel is above this (0-255) is positive; 'default' = "
                        "deepliif's automatic value, 'none' = no marker rule; default: the model's (none for "
                        "release folders and maps, deepliif's default)")
    p.add_argument("--split-nuclei", type=_upper, default=MODEL, metavar="PX",
                   help="split touching nuclei at distance-transform peaks at least PX pixels deep, or 'none' "
                        "(deepliif's rules); default: the model's (none for release folders and maps)")
    p.add_argument("--grow-cells", type=_upper, default=MODEL, metavar="PX",
                   help="grow every cell PX pixels into the background after the split (never into another cell), "
                        "or 'none' (deepliif's rules); default: the model's (none for release folders and maps)")
    p.add_argument("--positive-from", default=MODEL, choices=(MODEL, *POSITIVE_FROM),
                   help="which cells are positive: 'network' (deepliif's rule: the network's red against blue), "
                        "'dab' (the IHC's own DAB, by colour deconvolution, in the network's cells); default: the "
                        "model's (deepliif's rule for release folders)")
    p.add_argument("--resolution", default="auto", choices=("auto",) + RESOLUTIONS,
                   help="scan magnification for the automatic size rule; auto (default) = deepliif's rule from "
                        f"the tile size (40x above 384 px, 20x above 192, else 10x; {DEEPLIIF_TILE} -> 40x)")


def cell_settings_from(args: argparse.Namespace, tile: int | None = None) -> DeepLIIFSettings:
    """The workflow's settings for the cell arguments (what the DeepLIIF dock's sliders build);
    ``tile``: the tile size deepliif ran with (it sets the automatic magnification)."""
    return DeepLIIFSettings(seg_threshold=args.seg_thresh, size=args.size_thresh, size_upper=args.size_thresh_upper,
                            marker=args.marker_thresh, resolution=args.resolution, split=args.split_nuclei,
                            grow=args.grow_cells, positive_from=args.positive_from,
                            tile=None if tile is None else (int(tile),))
