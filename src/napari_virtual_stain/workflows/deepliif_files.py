"""DeepLIIF on image files: one IHC image to its set of files, and many (a folder, a glob, several
files) as one task each, here or on a dask.distributed cluster.

:func:`deepliif_file` is what ``virtual-stain deepliif IN.png -o OUT`` does for one input and
what every task of a many-input run does: read, run the workflow of :mod:`.deepliif`, count the
cells with the settings' thresholds, and write the input's files into the output folder together
(staged: all of them or none). A worker's predictor cache loads the model once for all its tasks.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..engine.distributed import LOCAL_WORKER_ENV, check_environment, connect, reads_with_own_threads, run_jobs
from ..errors import InputError
from ..io.outputs import StagedOutputs, check_distinct, check_output_folder
from . import deepliif as workflow

# What each modality's file is called, after deepliif's own names: ROI_1_Hema.png, ...
FILE_SUFFIX = {"Hematoxylin": "Hema", "DAPI": "DAPI", "Lap2": "Lap2", "Marker": "Marker", "Segmentation": "Seg"}


def read_input(path: str | Path, name: str, header_only: bool = False):
    """The input image as (Y, X, 3) uint8 data (lazy for big TIFFs), checked, and its LoadedImage.

    ``header_only``: every TIFF is opened lazily and nothing is read that the checks do not need
    (the check of many inputs before the first one runs).
    """
    from ..io.tiff_reader import LAZY_THRESHOLD_BYTES, load_image
    from ..tasks.deepliif import MIN_SIDE, as_rgb8

    image = load_image(path, lazy_threshold_bytes=0 if header_only else LAZY_THRESHOLD_BYTES)
    data = image.data
    if image.axes == "CYX" and data.shape[0] in (3, 4):  # a TIFF storing colour as channels
        data = np.moveaxis(data if header_only else np.asarray(data), 0, -1)
    data = as_rgb8(data, name)
    if min(data.shape[:2]) < MIN_SIDE:
        raise InputError(f"{Path(path).name} is only {data.shape[1]} x {data.shape[0]} pixels; DeepLIIF needs at "
                         f"least {MIN_SIDE} x {MIN_SIDE} to find cells.")
    return data, image


def pixel_size(image) -> float | None:
    """The image's pixel size along X in micrometres (the polygons' unit), if it says one."""
    size = image.pixel_size_um
    if size is None:
        return None
    values = [v for v in (size if isinstance(size, (list, tuple)) else [size]) if v]
    return float(values[-1]) if values else None


@reads_with_own_threads
def deepliif_file(source: str, out_dir: str, settings: dict, stem: str | None = None,
                  progress: Callable | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run DeepLIIF on the image ``source`` and write its files into ``out_dir``; returns the scoring.

    ``settings`` is a :class:`~.deepliif.DeepLIIFSettings` as a dict (what travels to a worker).
    The files appear together at the end, or not at all.
    """
    import time

    from ..tasks.deepliif import needs_store
    from ..tasks.deepliif_files import write_cell_files, write_png

    settings = workflow.DeepLIIFSettings(**settings)
    stem = stem or Path(source).stem
    data, image = read_input(source, stem)
    predictor = workflow.predictor_for(settings)  # loads the model: a wrong release folder is said here
    if log is not None:
        log(f"{source}: {tuple(data.shape)} {data.dtype} -> {predictor.card.name}")
    with StagedOutputs(out_dir) as out:
        store = out.path(f"{stem}.zarr") if needs_store(data.shape[:2]) else None
        t0 = time.perf_counter()
        result = workflow.run(settings, data, name=stem, store=store, analyse=False, progress=progress)
        t1 = time.perf_counter()
        thresholds = settings.thresholds(predictor.card)  # "model" values: the card's
        cells = result.analyse(thresholds.segmentation, settings.resolution_for(
            settings.tile[0] if settings.tile else predictor.card.tile[0]), thresholds.split, thresholds.grow)
        classes = cells.classify(thresholds)
        t2 = time.perf_counter()
        for name, suffix in FILE_SUFFIX.items():
            write_png(out.path(f"{stem}_{suffix}.png"), result.images[name])
        info = {"model": predictor.card.name,
                "region": {"start": list(result.region.start), "stop": list(result.region.stop)},
                "timing_s": {"networks": round(t1 - t0, 3), "cells": round(t2 - t1, 3)}}
        info = write_cell_files(out.path, stem, cells, classes, info, ihc=data, pixel_size_um=pixel_size(image))
    return {"input": str(source), "stem": stem, **info}


def plan_inputs(sources: Sequence[tuple[Path, str]], out_dir: str | Path, model: str | None = None,
                overwrite: bool = True) -> Path:
    """Check the output folder and that no two inputs would write the same files.

    ``overwrite`` False refuses an input whose files are already in the folder (its ``<stem>.json``).

    :func:`deepliif_many` makes the folder before any task starts (once the cluster answers),
    so tasks finishing together each move their own files into it.
    """
    inputs = [s for s, _ in sources] + ([model] if model else [])
    folder = check_output_folder(out_dir, inputs=inputs)
    check_distinct({f"files of {source}": folder / f"{stem}.json" for source, stem in sources})
    for _, stem in sources:
        if not overwrite and (folder / f"{stem}.json").exists():
            raise InputError(f"{folder} already holds the results of {stem} ({stem}.json and its images); "
                             "add --overwrite to replace them.")
    return folder


def deepliif_many(settings: workflow.DeepLIIFSettings, sources: Sequence[tuple[Path, str]], out_dir: str | Path, *,
                  cluster: str | None = None, progress: Callable[[int, int], None] | None = None,
                  cancel=None, overwrite: bool = True) -> list[dict]:
    """DeepLIIF on every ``(source, stem)``, here (``cluster`` None), on ``local:N`` or ``tcp://HOST:PORT``.

    Returns one scoring per input, in order. A model name from this user's model folder is sent
    as its path, so workers need the same file system (or the same installed models).
    """
    from ..models.registry import model_kind, model_location

    settings.validate()
    folder = plan_inputs(sources, out_dir, settings.model, overwrite=overwrite)
    if len(sources) > 1:  # every input is checked before the first one runs: a bad tenth file is said at once
        for source, stem in sources:
            read_input(source, stem, header_only=True)
    values = asdict(settings)
    if model_kind(settings.model) == "checkpoint":
        values["model"] = str(model_location(settings.model).resolve())
    with connect(cluster, worker_env=LOCAL_WORKER_ENV) as client:
        if client is not None:
            check_environment(client, deepliif_file.__module__)
        # Every task writes into one hidden staging folder (not before: a cluster that cannot run
        # the tasks leaves nothing); its files move into the output folder when all are done.
        with StagedOutputs(folder) as staged:
            jobs = [(str(source), str(staged.stage), values, stem) for source, stem in sources]
            return run_jobs(deepliif_file, jobs, client=client, names=[str(s) for s, _ in sources],
                            progress=progress, cancel=cancel)
