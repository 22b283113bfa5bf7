"""MAXIM from the shell: ``train-imputers``, ``impute`` and ``qc`` (batch QC of many stacks).

    virtual-stain train-imputers STACK.tif -o MODELDIR [--minutes M]      (the joint imputer)
    virtual-stain impute STACK.tif --models MODELDIR --marker NAME -o OUT.tif
    virtual-stain qc STACK.tif [MORE.tif ...] [--models MODELDIR] -o REPORT.json

``impute`` and ``qc`` also take several stacks, a folder, a glob or an HCS plate (every field),
one task per stack, here or with ``--cluster local:N`` / ``tcp://HOST:PORT`` on dask.distributed
workers (each loads the imputers once): ``impute`` writes ``<stem>_<marker>.tif`` per stack into
the folder -o, ``qc`` one report with an entry per stack (-o ending in .json) or one
``<stem>.json`` per stack into the folder -o.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.outputs import JSON_OUTPUT_SUFFIXES, OutputTransaction, check_output_file, check_output_folder
from .common import add_axes_argument, cluster_spec, non_negative_int, positive_float, positive_int, unit_interval
from .progress import TextProgress


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _add_cluster_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=cluster_spec, default=None, metavar="WHERE",
                   help="one task per stack on local:N (N worker processes here) or tcp://HOST:PORT (an existing "
                        "dask scheduler; workers need this package and the imputer folder)")


def _add_stack_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", type=_names, default=None,
                   help="marker names, comma-separated, one per channel (default: the names in the file)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    add_axes_argument(p)


def register(sub) -> None:
    p = sub.add_parser("train-imputers", help="train the joint MAXIM imputer (every marker from the others) "
                                              "on a well-stained stack",
                       description="Train one U-Net that imputes any marker of the panel from the others, with "
                                   "random channel masking; writes MODELDIR/joint-imputer.pt with its model card, "
                                   "including each marker's held-out error against the mean-of-other-markers "
                                   "baseline (which decides whether the QC's imputation check counts for it).")
    p.add_argument("stack", help="multiplex stack (TIFF/OME-TIFF with a channel axis)")
    p.add_argument("-o", "--output", required=True, help="folder for joint-imputer.pt")
    p.add_argument("--minutes", type=positive_float, default=None, help="training time (default 4, or by --steps)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: by --minutes)")
    p.add_argument("--patch", type=positive_int, default=None,
                   help="training patch size (default 96, or half the shorter side for a stack under 192 pixels, "
                        "as the MAXIM dock trains)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--base", type=positive_int, default=16, help="U-Net features at the first level (default 16)")
    p.add_argument("--depth", type=positive_int, default=3, help="U-Net poolings (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace a joint imputer already in MODELDIR")
    _add_stack_arguments(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("impute", help="impute one marker of a stack (or of many) with its MAXIM imputer",
                       description="Impute a marker from the other markers of a stack; writes a float32 TIFF. "
                                   "Several stacks, a folder, a glob or an HCS plate write <stem>_<marker>.tif "
                                   "per stack into the folder -o, one task each (see --cluster).")
    p.add_argument("stack", help="multiplex stack (TIFF/OME-TIFF/OME-Zarr with a channel axis); or a folder, a glob "
                                 "or an HCS plate")
    p.add_argument("more_stacks", nargs="*", metavar="MORE", help="more stacks (each writes its own TIFF)")
    p.add_argument("--models", required=True, help="folder of imputers (from train-imputers)")
    p.add_argument("--marker", required=True, help="the marker to impute")
    p.add_argument("--missing", nargs="+", default=(), help="input markers to treat as failed (fed as zeros)")
    p.add_argument("-o", "--output", required=True, help="output TIFF (one channel, values 0-1); a folder for "
                                                       "several stacks")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    _add_cluster_argument(p)
    _add_stack_arguments(p)
    p.set_defaults(func=run_impute)

    p = sub.add_parser("cell-scores", help="score a marker's imputation per cell (MAE, positive-cell AP) vs baselines",
                       description="Impute a marker and compare it with the acquired one cell by cell (paper 003): "
                                   "mean absolute error of the cell means and the average precision of calling "
                                   "positive cells, next to the BL-Mean and BL-Zero baselines. Writes JSON.")
    p.add_argument("stack", help="multiplex stack (TIFF/OME-TIFF with a channel axis)")
    p.add_argument("--models", required=True, help="folder of imputers (from train-imputers)")
    p.add_argument("--marker", required=True, help="the marker to score")
    p.add_argument("--labels", required=True, help="nuclei (or cell) label image of the same size (0 = background)")
    p.add_argument("--expand", type=non_negative_int, default=0, help="grow the nuclei by this many pixels")
    p.add_argument("--threshold", type=unit_interval, default=None,
                   help="positive above this normalised marker level (default: Otsu on the acquired cell means)")
    p.add_argument("-o", "--output", required=True, help="JSON with the scores")
    _add_stack_arguments(p)
    p.set_defaults(func=run_cell_scores)

    p = sub.add_parser("qc", help="flag failed stains of multiplex stacks (blank or dim areas, missing, noise, "
                                  "misregistered, saturated markers)",
                       description="Training-free checks of every marker (thresholds calibrated on clean real "
                                   "fields), and with --models the imputation check for markers whose imputer is "
                                   "good enough; writes flags, classes, evidence and boxes as JSON.")
    p.add_argument("stacks", nargs="+", help="one or more multiplex stacks, folders, globs or HCS plates")
    p.add_argument("--models", default=None, help="folder of imputers (from train-imputers); without it only "
                                                  "the training-free checks run")
    p.add_argument("-o", "--output", required=True, help="JSON report (one entry per stack for several stacks), "
                                                       "or a folder receiving one <stem>.json per stack")
    _add_cluster_argument(p)
    p.add_argument("--maps", default=None,
                   help="also write the disagreement maps of a single stack to this TIFF (one channel per marker)")
    p.add_argument("--fail-on-flag", action="store_true", help="exit with status 1 when any marker is flagged")
    _add_stack_arguments(p)
    p.set_defaults(func=run_qc_command)


def settings_from(args: argparse.Namespace, models: str | None = None):
    """The workflow's settings for these arguments (what the MAXIM dock builds from its fields)."""
    from ..workflows.maxim import MaximSettings

    values = {k: getattr(args, k) for k in ("marker", "device", "expand", "threshold", "steps", "patch", "batch_size",
                                            "base", "depth") if getattr(args, k, None) is not None}
    if getattr(args, "missing", None):
        values["missing"] = tuple(args.missing)
    if hasattr(args, "minutes"):  # train-imputers: 4 minutes unless only steps bound the run
        values["minutes"] = args.minutes if args.minutes else (None if args.steps else 4.0)
    return MaximSettings(folder=models or "", **values)


def _markers(path: str, args: argparse.Namespace):
    from ..workflows.maxim_files import read_markers

    return read_markers(path, args.names, args.axes)


def _warn(problems: list[str]) -> None:
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    from ..workflows import maxim as workflow

    check_output_folder(args.output, inputs=[args.stack], label="imputer folder")
    settings = settings_from(args, args.output)
    settings.validate(workflow.TRAIN)
    markers, _ = _markers(args.stack, args)
    names = markers.check()
    workflow.check_overwrite(settings, args.overwrite)
    stack = markers.data
    print(f"{args.stack}: {len(names)} markers ({', '.join(names)}), {stack.shape[1]}x{stack.shape[2]}; "
          "training the joint imputer", file=sys.stderr)
    result = workflow.train(settings, markers, overwrite=args.overwrite, progress=TextProgress("train-imputers"))
    print(f"\n{result.steps} steps in {result.seconds:.0f} s; held-out region {result.card.scores['heldout_region']}",
          file=sys.stderr)
    for marker, s in result.per_marker.items():
        if "imputer" not in s:
            print(f"  {marker}: not scored ({s.get('why')})", file=sys.stderr)
            continue
        print(f"  {marker}: held-out MAE {s['imputer']['mae']:.4f} PCC {s['imputer']['pcc']:.2f} (mean of other "
              f"markers: MAE {s['bl_mean']['mae']:.4f} PCC {s['bl_mean']['pcc']:.2f}) -> imputation check "
              f"{'counts' if s['counts'] else 'does not count (training-free checks only)'}", file=sys.stderr)
    print(f"wrote {result.path}", file=sys.stderr)
    return 0


def run_impute(args: argparse.Namespace) -> int:
    from ..workflows import maxim as workflow
    from ..workflows.maxim_files import expand_stacks, impute_many, plan_impute

    settings = settings_from(args, args.models)
    one_file = not (args.more_stacks or args.cluster or _names_many(args.stack))
    if one_file:  # the one-file path: any -o ending in .tif, checked as always
        pairs = [(args.stack, check_output_file(args.output, inputs=[args.stack], overwrite=args.overwrite))]
    settings.validate(workflow.IMPUTE)
    if not one_file:
        pairs = plan_impute(expand_stacks([args.stack, *args.more_stacks]), args.output, settings,
                            overwrite=args.overwrite)
        print(f"{len(pairs)} stack(s) -> {args.output} on {args.cluster or 'this process'}", file=sys.stderr)
    single = len(pairs) == 1 and not args.cluster
    results = impute_many(settings, pairs, cluster=args.cluster, names=args.names, axes=args.axes,
                          progress=None if single else TextProgress("impute"),
                          tile_progress=TextProgress("impute") if single else None)
    _warn(results[0]["warnings"])
    for result in results:
        print(f"wrote {result['output'] if not one_file else args.output}: {result['target']} (imputed) "
              f"{result['shape']}", file=sys.stderr)
    return 0


def _names_many(item: str) -> bool:
    """A folder that is not one OME-Zarr image, or a pattern: many stacks."""
    from ..io.ome_zarr_reader import is_plate, is_zarr_folder

    path = Path(str(item)).expanduser()
    if not path.exists():
        return glob.has_magic(str(item))
    return path.is_dir() and (not is_zarr_folder(path) or is_plate(path))


def run_cell_scores(args: argparse.Namespace) -> int:
    from ..io.tiff_reader import load_image
    from ..workflows import maxim as workflow

    check_output_file(args.output, inputs=[args.stack, args.labels], suffixes=JSON_OUTPUT_SUFFIXES, label="scores file")
    settings = settings_from(args, args.models)
    settings.validate(workflow.CELLS)
    markers, _ = _markers(args.stack, args)
    labels = np.asarray(load_image(args.labels).data)
    problems: list[str] = []
    result = workflow.evaluate_cells(settings, markers, labels, problems=problems, progress=TextProgress("cell-scores"))
    _warn(problems)
    target = result.marker
    summary = {k: float(v) for k, v in result.summary().items()}
    summary = {k: (v if np.isfinite(v) else None) for k, v in summary.items()}  # strict JSON: no NaN
    with OutputTransaction() as tx:
        tx.write_text(args.output, json.dumps({"marker": target, **summary}, indent=1))
    print(f"{target}: {int(summary['cells'])} cells, MAE {summary['mae']:.4f} -> {args.output}", file=sys.stderr)
    return 0


def run_qc_command(args: argparse.Namespace) -> int:
    from ..workflows import maxim as workflow
    from ..workflows.maxim_files import expand_stacks, plan_qc, qc_many, report_payload

    sources = expand_stacks(args.stacks)
    reports = plan_qc(sources, args.output, args.maps, settings_from(args, args.models))
    if args.maps and not args.models:
        raise InputError("--maps writes the imputation disagreement maps: give --models with it.")
    settings = settings_from(args, args.models)
    settings.validate(workflow.QC)
    if len(sources) > 1 or args.cluster:
        print(f"{len(sources)} stack(s) -> {args.output} on {args.cluster or 'this process'}", file=sys.stderr)
    single = len(sources) == 1 and not args.cluster
    results, problems = qc_many(settings, sources, reports, maps=bool(args.maps), cluster=args.cluster,
                                names=args.names, axes=args.axes, progress=None if single else TextProgress("qc"),
                                tile_progress=TextProgress(f"qc {Path(sources[0][0]).name}") if single else None)
    _warn(problems)
    for result in results:
        print(result["summary"], file=sys.stderr)
        for warning in result["warnings"]:
            print(f"warning: {result['key']}: {warning}", file=sys.stderr)
    if reports[0] is None or args.maps:
        with OutputTransaction() as tx:  # a half-written report never replaces a good one
            if args.maps:
                from ..io.tiff_writer import save_tiff

                maps, channels, pixel_size = results[0]["maps"]
                save_tiff(tx.stage(args.maps), maps, "CYX", channels, pixel_size)
            if reports[0] is None:
                payload = report_payload({r["key"]: r["report"] for r in results}, problems)
                tx.write_text(args.output, json.dumps(payload, indent=2, allow_nan=False))
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if (args.fail_on_flag and any(r["flagged"] for r in results)) else 0
