"""``virtual-stain``: the core functions from the shell (batch work, HPC, scripts).

Each subcommand lives in its own module with ``register(subparsers)``, which adds its
parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
User errors (VirtualStainError) are printed on one line and exit with status 2, and so is
running out of memory (with what to change); Ctrl-C exits with 130. Anything else is a bug:
one line saying so (exit 1), the traceback only with ``VIRTUAL_STAIN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ..errors import Cancelled, VirtualStainError, plain_text
from .progress import end_open_lines

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "demo",
    "predict",
    "models",
    "export",
    "preprocess",
    "train",
    "deepliif",
    "deepliif_cells",
    "evaluate",
    "maxim",
]


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one sentence on stderr and exit status 2, as every other user error.

    argparse's own ``error`` prints the whole usage block first, which buries the sentence that
    says what to change; ``--help`` still shows the usage.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="virtual-stain",
        description="Virtual staining, DeepLIIF and MAXIM imputation for microscopy images.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":  # not written yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return _run(args)
    except VirtualStainError as err:
        print(f"virtual-stain {args.command}: error: {plain_text(err, 1000)}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"virtual-stain {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"virtual-stain {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"virtual-stain {args.command}: error: there is not enough memory for this input; "
              "use a smaller image or region, smaller tiles (--tile) or a machine with more memory.", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: say so on one line, keep the traceback for whoever debugs it
        if os.environ.get("VIRTUAL_STAIN_DEBUG"):
            traceback.print_exc()
        first = plain_text(err)
        print(f"virtual-stain {args.command}: internal error ({type(err).__name__}: {first}); this is a bug, "
              "please report it with VIRTUAL_STAIN_DEBUG=1 set for the full traceback.", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except BaseException:
        end_open_lines()  # the error message starts on its own line, not after a half-drawn bar
        raise


if __name__ == "__main__":
    sys.exit(main())
