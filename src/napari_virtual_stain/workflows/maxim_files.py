"""MAXIM on stack files: one stack, or many (several files, a folder, a glob, every field of a
plate) as one task each, here or on a dask.distributed cluster.

:func:`impute_file` is what ``virtual-stain impute STACK -o OUT.tif`` does for one stack and
what every task of a many-stack run does (one TIFF per stack); :func:`qc_file` the same for
``virtual-stain qc`` (one report entry, or one JSON file, per stack). A process loads the
imputers once for all its stacks (:func:`imputers_for`, keyed by the folder's files and their
modification times), so a worker pays for them on its first task only. Every output is
checked, and two stacks that would write one file refused, before any work starts.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..engine.distributed import LOCAL_WORKER_ENV, check_environment, connect, reads_with_own_threads, run_jobs
from ..engine.predictor_cache import file_stamp
from ..errors import InputError
from ..io.outputs import (JSON_OUTPUT_SUFFIXES, OutputTransaction, check_distinct, check_output_file,
                          check_output_folder, staged_together)
from . import maxim as workflow
from .maxim_results import qc_summary
from ..tasks.arrays import nan_fraction
from .stain_files import expand_inputs, plan_outputs

if TYPE_CHECKING:
    from ..models.card import ModelCard

IMPUTE, QC = "impute", "qc"


# ---- reading ----------------------------------------------------------------------------

def read_stack(path: str, names: list[str] | None = None, axes: str | None = None,
               header_only: bool = False) -> tuple[np.ndarray, list[str], tuple | None]:
    """A (C, Y, X) stack, its marker names and (Y, X) pixel size from a file or an OME-Zarr field.

    Time and z axes of length one are dropped: HCS plates store 2D fields as (T, C, Z, Y, X).
    ``header_only``: the stack stays lazy (memory-mapped or dask) and nothing is read; for the
    check of many stacks before the first one runs.
    """
    from ..io.tiff_reader import LAZY_THRESHOLD_BYTES, load_image

    image = load_image(path, axes=axes, lazy_threshold_bytes=0 if header_only else LAZY_THRESHOLD_BYTES)
    data, axes, size = image.data, image.axes, image.pixel_size_um
    for axis in "TZ":
        if axis in axes and int(data.shape[axes.index(axis)]) == 1:
            data, axes = data[(slice(None),) * axes.index(axis) + (0,)], axes.replace(axis, "")
            if axis == "Z" and size is not None and len(size) == 3:
                size = tuple(size[-2:])
    if "T" in axes or "Z" in axes:
        raise InputError(f"{path} has axes {axes}: marker imputation needs one 2D multiplex image (channels, Y, X); "
                         "save a single time point and plane.")
    if axes.endswith("S"):
        raise InputError(f"{path} is an RGB image, not a multiplex stack of marker channels.")
    if "C" not in axes:
        raise InputError(f"{path} has a single channel: imputing a marker needs a stack of several markers.")
    return (data if header_only else np.asarray(data)), list(names or image.channel_names), size


def check_stacks(sources: Sequence[str], names: list[str] | None, axes: str | None,
                 card: ModelCard | None = None) -> None:
    """Open every stack (its header: nothing is read) and check its axes, markers and names, and that
    it has the markers ``card``'s imputer needs, before any work starts: a bad tenth stack is said
    at once instead of after nine were computed."""
    from ..tasks.maxim import check_model_fits

    for source in sources:
        stack, stack_names, _ = read_stack(source, names, axes, header_only=True)
        checked = workflow.MarkerInput.from_stack(stack, stack_names).check()
        if card is not None:
            check_model_fits(card, checked)


def read_markers(path: str, names: list[str] | None = None, axes: str | None = None):
    """``(MarkerInput, pixel size)`` of a stack file."""
    stack, names, size = read_stack(path, names, axes)
    return workflow.MarkerInput.from_stack(stack, names), size


def expand_stacks(items: Sequence[str]) -> list[tuple[Path, str, str]]:
    """``(source, stem, key)`` of every stack the given files, folders, globs and plates hold.

    ``key`` names the stack's entry in a QC report: the path as the user typed it for a file
    named on the command line (as the report always did), the path found for the others.
    """
    found = []
    for item in items:
        expanded = expand_inputs([item])
        named = len(expanded) == 1 and expanded[0][0] == Path(str(item)).expanduser()
        found.extend((source, stem, str(item) if named else str(source)) for source, stem in expanded)
    return found


# ---- the imputers, once per process -----------------------------------------------------

@functools.lru_cache(maxsize=2)
def _loaded(kind: str, folder: str, marker: str | None, stamp: tuple) -> tuple:
    """The imputers of ``folder`` as they are at ``stamp`` (its files' names, times and sizes)."""
    settings = workflow.MaximSettings(folder=folder, marker=marker)
    if kind == QC:
        loaded, warnings = workflow.load_qc_imputers(settings)
        return loaded, tuple(warnings)
    problems: list[str] = []
    return workflow.load_imputer(settings, problems), tuple(problems)


def imputers_for(settings: workflow.MaximSettings, kind: str) -> tuple:
    """``(imputers, warnings)``: QC's ``{marker: (model, card)}`` or impute's ``(model, card)``,
    loaded once per process for as long as the folder's files stay the same."""
    folder = settings.imputer_folder()
    if folder is None or not Path(folder).is_dir():  # nothing to keep; the loaders say what is wrong
        return _loaded.__wrapped__(kind, folder or "", settings.marker, ())
    return _loaded(kind, folder, settings.marker if kind == IMPUTE else None, file_stamp(Path(folder).resolve()))


# ---- one stack ----------------------------------------------------------------------------

@reads_with_own_threads
def impute_file(source: str, target: str, settings: dict, names: list[str] | None = None,
                axes: str | None = None, progress: Callable | None = None) -> dict:
    """Impute the settings' marker of the stack ``source`` and write ``target`` (one-plane float32
    TIFF, atomically): one task of a many-stack run. ``settings``: :class:`~.maxim.MaximSettings`
    as a dict (what travels to a worker)."""
    from ..io.tiff_writer import save_tiff

    settings = workflow.MaximSettings(**settings)
    settings.validate(workflow.IMPUTE)
    markers, size = read_markers(source, names, axes)
    imputer, problems = imputers_for(settings, IMPUTE)
    share = nan_fraction(markers.read()[0])
    if share > 0:
        problems = (*problems, f"{share:.1%} of the pixels of {Path(source).name} are NaN or infinite; the imputer "
                               "took them as 0")
    result = workflow.impute(settings, markers, imputer=imputer, progress=progress)
    # One plane: written as Y, X (a one-entry channel axis does not survive a round trip).
    save_tiff(target, result.data.astype(np.float32), "YX", None, size)
    return {"input": str(source), "output": str(target), "target": result.target,
            "shape": tuple(int(n) for n in result.data.shape), "warnings": list(problems)}


def report_payload(reports: dict[str, dict], problems: Sequence[str]) -> dict:
    """The QC report file: one stack's report, or ``{"stacks": {key: report}}`` for several, with
    the imputer files that could not be used named at the top."""
    payload = next(iter(reports.values())) if len(reports) == 1 else {"stacks": reports}
    if problems:
        payload = dict(payload, skipped_models=list(problems), warnings=list(payload.get("warnings", problems)))
    return payload


@reads_with_own_threads
def qc_file(source: str, key: str, settings: dict, names: list[str] | None = None, axes: str | None = None,
            report: str | None = None, maps: bool = False, progress: Callable | None = None) -> dict:
    """QC the stack ``source``: its report as a dict, flags, summary and warnings; with ``report``
    also that stack's own JSON file (atomically); with ``maps`` the disagreement maps
    ``(array, channel names, pixel size)``. One task of a many-stack run."""
    settings = workflow.MaximSettings(**settings)
    settings.validate(workflow.QC)
    markers, size = read_markers(source, names, axes)
    imputers = imputers_for(settings, QC)
    result = workflow.qc(settings, markers, imputers=imputers, progress=progress)
    entry = result.to_dict()
    if report is not None:
        with OutputTransaction() as tx:
            tx.write_text(report, json.dumps(report_payload({key: entry}, imputers[1]), indent=2, allow_nan=False))
    out = {"input": str(source), "key": key, "report": entry, "flagged": list(result.flagged),
           "summary": qc_summary(key, result), "warnings": list(result.warnings[len(imputers[1]):]), "maps": None}
    if maps:
        order = list(result.markers)
        values = np.stack([result.markers[m].disagreement for m in order]).astype(np.float32)
        out["maps"] = (values, [f"{m} disagreement" for m in order], size)
    return out


# ---- many stacks ------------------------------------------------------------------------

def _jobs_settings(settings: workflow.MaximSettings, cluster: str | None) -> dict:
    """The settings as they travel: on a cluster the imputer folder as an absolute path (workers
    share the file system, not the working folder)."""
    values = asdict(settings)
    folder = settings.imputer_folder()
    if folder is not None and cluster is not None:
        values["folder"] = str(Path(folder).expanduser().resolve())
    return values


def plan_impute(sources: Sequence[tuple[Path, str, str]], output: str, settings: workflow.MaximSettings,
                overwrite: bool = True):
    """``(source, target)`` pairs: ``output`` itself for one stack and a .tif name, else a folder
    receiving ``<stem>_<marker>.tif`` per stack; every target checked, none twice (and, with
    ``overwrite`` False, none already there)."""
    marker = str(settings.marker or "imputed")
    return plan_outputs([(s, f"{stem}_{marker}") for s, stem, _ in sources], output, "tiff",
                        model=settings.imputer_folder(), overwrite=overwrite)


def impute_many(settings: workflow.MaximSettings, pairs: Sequence[tuple[Path, Path]], *, cluster: str | None = None,
                names: list[str] | None = None, axes: str | None = None,
                progress: Callable[[int, int], None] | None = None, tile_progress: Callable | None = None,
                cancel=None) -> list[dict]:
    """Impute every ``(source, target)``, here (``cluster`` None), on ``local:N`` or ``tcp://HOST:PORT``.

    Returns one summary per stack, in order. ``tile_progress`` follows the tiles of a single
    stack run here (``progress`` follows finished stacks).
    """
    settings.validate(workflow.IMPUTE)
    values = _jobs_settings(settings, cluster)
    (_, card), _ = imputers_for(workflow.MaximSettings(**values), IMPUTE)  # a wrong folder or marker: said here
    if len(pairs) > 1:
        check_stacks([str(s) for s, _ in pairs], names, axes, card)
    with connect(cluster, worker_env=LOCAL_WORKER_ENV) as client, \
            staged_together([t for _, t in pairs]) as staged:  # a failing last stack leaves no earlier output
        jobs = [(str(s), str(t), values, names, axes, tile_progress if cluster is None else None)
                for (s, _), t in zip(pairs, staged)]
        results = run_jobs(impute_file, jobs, client=client, names=[str(s) for s, _ in pairs], progress=progress,
                           cancel=cancel)
    for result, (_, target) in zip(results, pairs):  # where each output is now, not where it was staged
        result["output"] = str(target)
    return results


def plan_qc(sources: Sequence[tuple[Path, str, str]], output: str, maps: str | None,
            settings: workflow.MaximSettings) -> list[str | None]:
    """Each stack's own report file, or None for all when ``output`` is one report (.json).

    One report for a .json name; otherwise, for several stacks or an existing folder, a folder
    receiving ``<stem>.json`` per stack. A single stack's report must end in .json, as always.
    """
    inputs = [s for s, _, _ in sources] + [settings.imputer_folder()]
    if maps and len(sources) > 1:
        raise InputError("--maps writes the maps of one stack; give a single stack with it.")
    if maps:
        check_output_file(maps, inputs=inputs, label="maps file")
    one_report = str(output).lower().endswith(JSON_OUTPUT_SUFFIXES) or (
        len(sources) == 1 and not Path(output).expanduser().is_dir())
    if one_report:
        check_output_file(output, inputs=inputs, suffixes=JSON_OUTPUT_SUFFIXES, label="report")
        check_distinct({"report": output, "maps file": maps})
        keys = [key for _, _, key in sources]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise InputError(f"{duplicated[0]} is given twice: the report has one entry per stack.")
        return [None] * len(sources)
    folder = check_output_folder(output, inputs=inputs, label="report folder")
    reports = [folder / f"{stem}.json" for _, stem, _ in sources]
    for path in reports:
        check_output_file(path, inputs=inputs, suffixes=JSON_OUTPUT_SUFFIXES, label="report")
    check_distinct({f"report of {s}": p for (s, _, _), p in zip(sources, reports)} | {"maps file": maps})
    return [str(p) for p in reports]


def qc_many(settings: workflow.MaximSettings, sources: Sequence[tuple[Path, str, str]],
            reports: Sequence[str | None], *, maps: bool = False, cluster: str | None = None,
            names: list[str] | None = None, axes: str | None = None,
            progress: Callable[[int, int], None] | None = None, tile_progress: Callable | None = None,
            cancel=None) -> tuple[list[dict], list[str]]:
    """QC every stack, here or on a cluster: ``(one result per stack in order, imputer warnings)``.

    ``reports``: each stack's own report file (from :func:`plan_qc`; None: the caller writes one
    report of all). ``tile_progress`` follows the tiles of a single stack run here.
    """
    settings.validate(workflow.QC)
    values = _jobs_settings(settings, cluster)
    _, problems = imputers_for(workflow.MaximSettings(**values), QC)  # an unusable folder stops the run here
    if len(sources) > 1:
        check_stacks([str(s) for s, _, _ in sources], names, axes)
    jobs = [(str(source), key, values, names, axes, report, maps, tile_progress if cluster is None else None)
            for (source, _, key), report in zip(sources, reports)]
    with connect(cluster, worker_env=LOCAL_WORKER_ENV) as client:
        if client is not None:
            check_environment(client, qc_file.__module__)
        own_reports = [r for r in reports if r is not None]
        # Each stack's report is staged (not before: a cluster that cannot run the tasks leaves
        # nothing) and all of them move into the folder together when every stack is done.
        with staged_together(own_reports) as staged:
            where = iter(staged)
            jobs = [job[:5] + ((str(next(where)) if job[5] is not None else None),) + job[6:] for job in jobs]
            results = run_jobs(qc_file, jobs, client=client, names=[str(s) for s, _, _ in sources],
                               progress=progress, cancel=cancel)
    return results, list(problems)
