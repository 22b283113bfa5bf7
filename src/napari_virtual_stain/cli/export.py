"""``virtual-stain export MODEL -o PKG.zip``: a model as a bioimage.io package (format 0.5)."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..io.outputs import check_output_file


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as a bioimage.io package (.zip)",
                       description="Write a bundled, user or fine-tuned model as a bioimage.io model package "
                                   "(format 0.5) that `bioimageio test` accepts and other tools can run.")
    p.add_argument("model", help="model name (see `virtual-stain models`) or path to a .pt file")
    p.add_argument("-o", "--output", required=True, help="the package to write (.zip)")
    p.add_argument("--license", default=None, help="SPDX licence of the model (default: BSD-3-Clause)")
    p.add_argument("--author", action="append", default=None, help="an author's name (repeat for several)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.bioimageio_export import export_package

    output = check_output_file(args.output, inputs=[args.model], suffixes=(".zip",), label="package")
    if output.exists() and not args.overwrite:
        raise InputError(f"{output} exists; add --overwrite to replace it.")
    path = export_package(args.model, output, license=args.license, authors=args.author)
    print(f"wrote {path}")
    return 0
