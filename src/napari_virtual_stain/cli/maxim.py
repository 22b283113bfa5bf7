"""MAXIM from the shell: ``train-imputers``, ``impute`` and ``qc`` (batch QC of many stacks).

    virtual-stain train-imputers STACK.tif -o MODELDIR [--minutes M]      (the joint imputer)
    virtual-stain impute STACK.tif --models MODELDIR --marker NAME -o OUT.tif
    virtual-stain qc STACK.tif [MORE.tif ...] [--models MODELDIR] -o REPORT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.outputs import JSON_OUTPUT_SUFFIXES, OutputTransaction, check_distinct, check_output_file, check_output_folder
from .common import add_axes_argument, non_negative_int, positive_float, positive_int, unit_interval
from .progress import TextProgress


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


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

    p = sub.add_parser("impute", help="impute one marker of a stack with its MAXIM imputer",
                       description="Impute a marker from the other markers of a stack; writes a float32 TIFF.")
    p.add_argument("stack", help="multiplex stack (TIFF/OME-TIFF with a channel axis)")
    p.add_argument("--models", required=True, help="folder of imputers (from train-imputers)")
    p.add_argument("--marker", required=True, help="the marker to impute")
    p.add_argument("--missing", nargs="+", default=(), help="input markers to treat as failed (fed as zeros)")
    p.add_argument("-o", "--output", required=True, help="output TIFF (one channel, values 0-1)")
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
    p.add_argument("stacks", nargs="+", help="one or more multiplex stacks")
    p.add_argument("--models", default=None, help="folder of imputers (from train-imputers); without it only "
                                                  "the training-free checks run")
    p.add_argument("-o", "--output", required=True, help="JSON report (one entry per stack for several stacks)")
    p.add_argument("--maps", default=None,
                   help="also write the disagreement maps of a single stack to this TIFF (one channel per marker)")
    p.add_argument("--fail-on-flag", action="store_true", help="exit with status 1 when any marker is flagged")
    _add_stack_arguments(p)
    p.set_defaults(func=run_qc_command)


def read_stack(path: str, names: list[str] | None, axes: str | None = None) -> tuple[np.ndarray, list[str], tuple | None]:
    """A (C, Y, X) stack, its marker names and pixel size from a file."""
    from ..io.tiff_reader import load_image

    image = load_image(path, axes=axes)
    axes = image.axes
    if "T" in axes or "Z" in axes:
        raise InputError(f"{path} has axes {axes}: marker imputation needs one 2D multiplex image (channels, Y, X); "
                         "save a single time point and plane.")
    if axes.endswith("S"):
        raise InputError(f"{path} is an RGB image, not a multiplex stack of marker channels.")
    if "C" not in axes:
        raise InputError(f"{path} has a single channel: imputing a marker needs a stack of several markers.")
    data = np.asarray(image.data)
    file_names = list(image.channel_names)
    names = names or file_names
    return data, names, image.pixel_size_um


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
    from ..workflows.maxim import MarkerInput

    stack, names, pixel_size = read_stack(path, args.names, args.axes)
    return MarkerInput.from_stack(stack, names), pixel_size


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
    from ..io.tiff_writer import save_tiff
    from ..workflows import maxim as workflow

    output = check_output_file(args.output, inputs=[args.stack])
    settings = settings_from(args, args.models)
    settings.validate(workflow.IMPUTE)
    markers, pixel_size = _markers(args.stack, args)
    problems: list[str] = []
    result = workflow.impute(settings, markers, problems=problems, progress=TextProgress("impute"))
    _warn(problems)
    # One plane: written as Y, X (a one-entry channel axis does not survive a round trip).
    save_tiff(output, result.data.astype(np.float32), "YX", None, pixel_size)
    print(f"wrote {args.output}: {result.target} (imputed) {result.data.shape}", file=sys.stderr)
    return 0


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


def _summary_line(path: str, report) -> str:
    flagged = report.flagged
    lines = [f"{path}: " + (f"FLAGGED {', '.join(flagged)}" if flagged else "no stain flagged")
             + f" ({len(report.names)} channels, {len(report.to_dict()['not_assessable'])} not assessable)"]
    for marker in flagged:
        for finding in report.findings(marker):
            where = f" at {finding['start']}-{finding['stop']}" if "start" in finding else ""
            lines.append(f"  {marker} FLAGGED {finding['class']}{where}: {finding['sentence']}")
    for marker, q in report.markers.items():
        if marker not in flagged:
            lines.append(f"  {marker} {'ok' if q.assessable else 'imputer too poor to judge'} "
                         f"(imputed PCC {q.scores['pcc']:.2f})")
    return "\n".join(lines)


def run_qc_command(args: argparse.Namespace) -> int:
    from ..workflows import maxim as workflow

    if args.maps and len(args.stacks) > 1:
        raise InputError("--maps writes the maps of one stack; give a single stack with it.")
    check_output_file(args.output, inputs=args.stacks, suffixes=JSON_OUTPUT_SUFFIXES, label="report")
    if args.maps:
        check_output_file(args.maps, inputs=args.stacks, label="maps file")
    check_distinct({"report": args.output, "maps file": args.maps})
    if args.maps and not args.models:
        raise InputError("--maps writes the imputation disagreement maps: give --models with it.")
    settings = settings_from(args, args.models)
    settings.validate(workflow.QC)
    imputers = workflow.load_qc_imputers(settings)  # once for every stack
    problems = imputers[1]
    _warn(problems)
    maps_to_write = None
    reports = {}
    any_flag = False
    for path in args.stacks:
        markers, pixel_size = _markers(path, args)
        report = workflow.qc(settings, markers, imputers=imputers, progress=TextProgress(f"qc {Path(path).name}"))
        reports[path] = report.to_dict()
        any_flag = any_flag or bool(report.flagged)
        print(_summary_line(path, report), file=sys.stderr)
        for warning in report.warnings[len(problems):]:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        if args.maps:
            markers = list(report.markers)
            maps = np.stack([report.markers[m].disagreement for m in markers]).astype(np.float32)
            maps_to_write = (maps, [f"{m} disagreement" for m in markers], pixel_size)
    payload = next(iter(reports.values())) if len(reports) == 1 else {"stacks": reports}
    if problems:
        payload = dict(payload, skipped_models=problems, warnings=list(payload.get("warnings", problems)))
    with OutputTransaction() as tx:  # a half-written report never replaces a good one
        if maps_to_write is not None:
            from ..io.tiff_writer import save_tiff

            save_tiff(tx.stage(args.maps), maps_to_write[0], "CYX", maps_to_write[1], maps_to_write[2])
        tx.write_text(args.output, json.dumps(payload, indent=2, allow_nan=False))
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if (args.fail_on_flag and any_flag) else 0
