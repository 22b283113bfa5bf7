"""``virtual-stain predict IN.tif -o OUT.tif --model NAME``: virtual staining from the shell."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from ..engine.memory import require_memory
from ..errors import InputError
from ..io.outputs import check_output_file
from ..io.tiff_reader import load_image
from ..io.tiff_writer import save_tiff
from ..tasks.arrays import layout_for
from .progress import TextProgress
from .common import add_axes_argument, add_engine_arguments
from .predict_many import add_scale_out_arguments, predict_many, wants_scale_out


def register(sub) -> None:
    p = sub.add_parser("predict", help="virtually stain an image or stack with a model",
                       description="Predict the model's output channels for a whole image or z-stack. A 2.5D "
                                   "model slides its window of planes along a stack (ZYX out), or predicts the centre "
                                   "plane of a stack exactly one window deep (YX out).")
    p.add_argument("input", help="input image (TIFF/OME-TIFF; PNG/JPEG for colour models)")
    p.add_argument("-o", "--output", required=True, help="output TIFF (.tif), one channel per model output")
    p.add_argument("--model", default="demo-2d-nuclei-membrane",
                   help="model name (see `virtual-stain models`), a .pt file, or a bioimage.io package "
                        "(its folder, bioimageio.yaml/rdf.yaml or .zip)")
    p.add_argument("--channel", default=None,
                   help="for a multi-channel file and a one-channel model: the channel to use (name or index)")
    add_axes_argument(p)
    add_engine_arguments(p)
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average each tile's prediction over its 8 flips and quarter turns "
                        "(8x the time)")
    add_scale_out_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..workflows import stain as workflow
    from ..workflows.stain_files import channels_first, stain_image

    if wants_scale_out(args):  # many inputs, a plate, an OME-Zarr output or --cluster
        return predict_many(args)
    if args.output_format == "ome-zarr":  # one file and a TIFF name: say so rather than write a TIFF
        raise InputError(f"--output-format ome-zarr writes OME-Zarr, but the output {Path(args.output).name} "
                         "names a TIFF: end it in .ome.zarr, or leave --output-format out.")
    output = check_output_file(args.output, inputs=[args.input, args.model], overwrite=args.overwrite)
    settings = workflow.StainSettings(model=args.model, device=args.device, precision=args.precision,
                                      tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, tta=args.tta)
    settings.validate()
    card = workflow.predictor_for(settings).card  # loads the model once: tile sizes are checked here
    image = load_image(args.input, axes=args.axes)
    data, rgb = channels_first(image, card, args.channel)  # the same choice as each file of a many-file run
    layout_for(data, card, rgb, Path(args.input).name)  # a shape or type the model cannot take: said before anything
    axes = image.axes
    if card.n_in == 1 and not rgb:
        axes = axes.replace("C", "")
    elif "C" in axes:
        axes = "C" + axes.replace("C", "")
    spatial_size = math.prod(int(n) for n, a in zip(data.shape, axes) if a in "ZYX")
    require_memory(4 * spatial_size * card.n_out, f"The result for {Path(args.input).name} ({card.n_out} channel(s) "
                   f"of {spatial_size / 1e6:.0f} megapixels in float32)", "predict a cropped region or a smaller stack")
    print(f"{args.input}: {axes} {tuple(data.shape)} {data.dtype} -> {card.summary()}", file=sys.stderr)
    result, size = stain_image(settings, data, rgb=rgb, name=str(args.input), pixel_size=image.pixel_size_um,
                               progress=TextProgress("predict"))
    if result.nan_fraction > 0:
        print(f"warning: {result.nan_fraction:.1%} of the input pixels were NaN or infinite and were treated as 0",
              file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    spatial_axes = "ZYX" if result.data.ndim == 4 else "YX"
    save_tiff(output, result.data.astype(np.float32), "C" + spatial_axes, result.channels, size)
    print(f"wrote {args.output}: {', '.join(result.channels)} {result.data.shape[1:]}", file=sys.stderr)
    return 0
