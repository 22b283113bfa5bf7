"""Virtual staining of many inputs (a folder, a glob, several files, every field of a plate), one file each.

Each input is one job: read, stain with the settings of :mod:`.stain` (the same ``run`` the dock
and ``virtual-stain predict`` use), write one output file, atomically. Jobs run here or on a
dask.distributed cluster through :mod:`..engine.distributed`; on a worker the model is loaded
once, by the worker's own predictor cache (keyed by the model file and its modification time).
Every output is checked before any work starts.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..engine.distributed import LOCAL_WORKER_ENV, connect, reads_with_own_threads, run_jobs
from ..errors import InputError
from ..io.ome_zarr_reader import ZARR_SUFFIXES, is_plate, is_zarr_folder, plate_fields, read_ome_zarr
from ..io.outputs import check_distinct, check_output_file, check_output_folder, staged_together
from ..io.tiff_reader import OTHER_IMAGE_SUFFIXES, TIFF_SUFFIXES, image_suffix
from ..models.zwindow import z_window
from ..tasks.arrays import layout_for
from ..tasks.region import Region
from . import stain as workflow

OUTPUT_FORMATS = {"tiff": ".tif", "ome-zarr": ".ome.zarr"}


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in TIFF_SUFFIXES + OTHER_IMAGE_SUFFIXES + ZARR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_input(path: Path) -> bool:
    return (path.is_file() and image_suffix(path) != "") or is_zarr_folder(path)


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """``(source, output stem)`` of every image the given paths, folders, globs and plates hold.

    A folder gives its image files and zarr stores (sorted, not recursive); a plate or well gives
    every field (stem ``plate_A_1_0``); a pattern with * ? or [ gives what it matches.
    """
    found: list[tuple[Path, str]] = []
    for item in items:
        text = str(item)
        path = Path(text).expanduser()
        if not path.exists() and glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text)))]
            matches = [m for m in matches if _is_input(m)]
            if not matches:
                raise InputError(f"No image matches {text!r}.")
            found.extend(item for m in matches for item in expand_inputs([m]))
        elif not path.exists():
            raise InputError(f"There is no file or folder {text!r}.")
        elif is_plate(path):
            found.extend((Path(f), f"{_stem(path)}_{'_'.join(Path(f).relative_to(path).parts)}")
                         for f in plate_fields(path))
        elif path.is_dir() and not is_zarr_folder(path):
            inside = sorted(p for p in path.iterdir() if not p.name.startswith(".") and _is_input(p))
            if not inside:
                raise InputError(f"The folder {path} holds no TIFF, PNG, JPEG or OME-Zarr images.")
            found.extend(item for p in inside for item in expand_inputs([p]))
        else:
            if is_zarr_folder(path):  # its metadata now, so a store that is not OME-Zarr stops the run before any work
                read_ome_zarr(path)
            found.append((path, _stem(path)))
    return found


def plan_outputs(sources: list[tuple[Path, str]], output: str | os.PathLike, output_format: str = "tiff",
                 model: str | None = None, overwrite: bool = True) -> list[tuple[Path, Path]]:
    """``(source, target)`` pairs, every target checked before any work starts.

    One source and an ``output`` that names a file (``.tif``/``.ome.zarr``): that file.
    Otherwise ``output`` is a folder that receives ``<stem><suffix>`` per source.
    ``overwrite`` False refuses a target that exists.
    """
    from ..io.ome_zarr_writer import check_output_store

    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"Unknown output format {output_format!r}: use {' or '.join(OUTPUT_FORMATS)}.")
    inputs = [s for s, _ in sources] + ([model] if model else [])
    output = Path(output).expanduser()
    names_a_file = output.name.lower().endswith((".tif", ".tiff") + ZARR_SUFFIXES)
    if len(sources) == 1 and names_a_file:
        targets = [output]
    else:
        if names_a_file:
            raise InputError(f"{len(sources)} inputs need an output folder, not the file name {output.name}.")
        folder = check_output_folder(output, inputs=inputs)
        targets = [folder / f"{stem}{OUTPUT_FORMATS[output_format]}" for _, stem in sources]
    for target in targets:
        if target.name.lower().endswith(ZARR_SUFFIXES):
            check_output_store(target, inputs=inputs, overwrite=overwrite)
        else:
            check_output_file(target, inputs=inputs, overwrite=overwrite)
    check_distinct({f"output for {s}": t for (s, _), t in zip(sources, targets)})
    return [(s, t) for (s, _), t in zip(sources, targets)]


def _channel_index(image, card, channel: str | None) -> int | None:
    """The channel a one-channel model takes from a multi-channel file (None: the data go as they are),
    or one sentence saying why the choice does not fit the file."""
    axes, shape = image.axes, tuple(image.data.shape)
    rgb = axes.endswith("S")
    if channel is not None and "C" not in axes and str(channel) != "0":
        raise InputError(f"--channel {channel} picks one channel of a multi-channel file, but "
                         f"{Path(image.source_path).name} has a single channel ({axes} {shape}); "
                         "leave --channel out.")
    if not (card.n_in == 1 and not rgb and "C" in axes):
        return None
    n, names = int(shape[axes.index("C")]), list(image.channel_names)
    if channel is None and n != 1:
        raise InputError(f"{Path(image.source_path).name} has {n} channels ({', '.join(names[:8])}) "
                         "but the model takes one: choose it with --channel NAME.")
    index = 0 if channel is None else names.index(channel) if channel in names else \
        int(channel) if str(channel).isdigit() else -1
    if not 0 <= index < n:
        raise InputError(f"There is no channel {channel!r} in {Path(image.source_path).name} "
                         f"(channels: {', '.join(names)}).")
    return index


def channels_first(image, card, channel: str | None):
    """The image's data as the model takes it, and whether it is RGB (one channel picked for one-channel models)."""
    data, axes = image.data, image.axes
    rgb = axes.endswith("S")
    index = _channel_index(image, card, channel)
    if index is not None:
        data = np.take(data, index, axis=axes.index("C"))
    elif "C" in axes and axes.index("C") != 0:
        data = np.moveaxis(np.asarray(data), axes.index("C"), 0)
    return data, rgb


def check_inputs(settings: workflow.StainSettings, sources: Sequence[str | os.PathLike], channel: str | None = None,
                 axes: str | None = None) -> None:
    """Open every input (its header: big files are not read) and check it fits the model, before any
    work starts: a bad tenth file is said at once instead of after nine were stained.

    The checks are those the staining itself makes (the file opens, the channel choice, the model's
    channels and dimensions), on a stand-in of the data's shape and type that holds no pixels.
    """
    from ..io.tiff_reader import load_image

    card = workflow.predictor_for(settings).card
    for source in sources:
        image = load_image(source, lazy_threshold_bytes=0, axes=axes)
        shape, image_axes = list(image.data.shape), image.axes
        index = _channel_index(image, card, channel)
        if "C" in image_axes:
            c = image_axes.index("C")
            shape = shape[:c] + shape[c + 1:] if index is not None else [shape[c]] + shape[:c] + shape[c + 1:]
        stand_in = np.broadcast_to(np.zeros((), np.dtype(image.data.dtype)), tuple(shape))
        layout_for(stand_in, card, image_axes.endswith("S"), str(source))


def one_window_region(card, data, rgb: bool = False, name: str = "image") -> Region | None:
    """For a 2.5D model and a stack exactly one window deep: the region of the window's centre plane."""
    window = z_window(card)
    if window is None:
        return None
    spatial = layout_for(data, card, rgb, name).spatial_shape(tuple(data.shape))
    if len(spatial) != 3 or spatial[0] != window.planes:
        return None
    return Region((window.centre, 0, 0), (window.centre + 1,) + tuple(int(n) for n in spatial[1:]))


def stain_image(settings: workflow.StainSettings, data, *, rgb: bool, name: str, pixel_size=None,
                progress=None, cancel=None):
    """(result, pixel size) of staining a whole file's image, the same for one file and for many.

    A 2.5D model on a stack exactly one window deep predicts the window's centre plane
    (YX out); on a deeper stack it slides along z (ZYX out).
    """
    card = workflow.predictor_for(settings).card
    region = one_window_region(card, data, rgb, name)
    result = workflow.run(settings, data, rgb=rgb, name=name, region=region, progress=progress, cancel=cancel)
    if region is not None:  # one window of planes in, its centre plane out
        result.data = result.data[:, 0]
        if pixel_size is not None and len(pixel_size) == 3:
            pixel_size = pixel_size[-2:]
    return result, pixel_size


@reads_with_own_threads
def stain_file(source: str, target: str, settings: dict, channel: str | None = None,
               axes: str | None = None, as_zarr: bool | None = None) -> dict:
    """Stain one input file and write ``target`` (.tif or .ome.zarr) atomically: one task of a scale-out.

    ``settings`` is a :class:`~.stain.StainSettings` as a dict (what travels to a worker). The
    predictor comes from the process's cache: a worker loads the model for its first task only.
    ``as_zarr`` None: the format from ``target``'s name; True: OME-Zarr whatever the name (a
    plate's field group, ``A/1/0``).
    """
    from ..io.ome_zarr_writer import save_ome_zarr
    from ..io.tiff_reader import load_image
    from ..io.tiff_writer import save_tiff

    settings = workflow.StainSettings(**settings)
    card = workflow.predictor_for(settings).card
    image = load_image(source, axes=axes)
    data, rgb = channels_first(image, card, channel)
    result, size = stain_image(settings, data, rgb=rgb, name=str(source), pixel_size=image.pixel_size_um)
    spatial = "ZYX" if result.data.ndim == 4 else "YX"
    values = result.data.astype(np.float32)
    if as_zarr and not Path(target).parent.is_dir():
        # a plate's field whose staging plate is gone: the run failed or was cancelled while this
        # task ran on; writing would bring back part of a removed plate
        from ..errors import Cancelled

        raise Cancelled(f"the plate that {target} belongs to was removed before this field was written")
    if as_zarr or (as_zarr is None and str(target).lower().endswith(ZARR_SUFFIXES)):
        save_ome_zarr(target, values, "C" + spatial, result.channels, size)
    else:
        save_tiff(target, values, "C" + spatial, result.channels, size)
    return {"input": str(source), "output": str(target), "shape": tuple(int(v) for v in values.shape),
            "warnings": list(result.warnings), "nan_fraction": float(result.nan_fraction)}


def _settings_for_workers(settings: workflow.StainSettings) -> dict:
    """The settings as a dict, the model name resolved to its file here (workers share the file system)."""
    from ..models.registry import model_kind, model_location

    settings.validate()
    values = asdict(settings)
    if model_kind(settings.model) == "checkpoint":  # a name from this user's model folder: send its path
        values["model"] = str(model_location(settings.model).resolve())
    return values


def stain_many(settings: workflow.StainSettings, pairs: list[tuple[Path, Path]], *, cluster: str | None = None,
               channel: str | None = None, axes: str | None = None,
               progress: Callable[[int, int], None] | None = None, cancel=None) -> list[dict]:
    """Stain every ``(source, target)`` pair, here (``cluster`` None), on ``local:N`` or on ``tcp://HOST:PORT``.

    Returns one summary per input, in order. The model name is resolved to its file here, so
    workers need the same file system (or the same installed models), not the same settings.
    """
    values = _settings_for_workers(settings)
    if len(pairs) > 1:
        check_inputs(settings, [s for s, _ in pairs], channel, axes)
    with connect(cluster, worker_env=LOCAL_WORKER_ENV) as client, \
            staged_together([t for _, t in pairs]) as staged:  # a failing last input leaves no earlier output
        jobs = [(str(s), str(t), values, channel, axes) for (s, _), t in zip(pairs, staged)]
        results = run_jobs(stain_file, jobs, client=client, names=[str(s) for s, _ in pairs],
                           progress=progress, cancel=cancel)
    for result, (_, target) in zip(results, pairs):  # where each output is now, not where it was staged
        result["output"] = str(target)
    return results


def plan_plate(plate: str | os.PathLike, output: str | os.PathLike, model: str | None = None):
    """The input plate's layout and the checked output plate path, before any work starts.

    Every field must be present (``plate_fields`` says which is missing); an existing output
    is refused, as is one inside the input.
    """
    from ..io.ome_zarr_plate_writer import check_output_plate, plate_layout

    plate = Path(plate).expanduser()
    fields = plate_fields(plate)
    layout = plate_layout(plate)
    if [str(plate / r) for r in layout.field_paths()] != fields:  # the same listing, read twice
        raise InputError(f"The plate {plate.name} lists its fields inconsistently; it cannot be copied.")
    return layout, check_output_plate(output, inputs=[plate] + ([model] if model else []))


def stain_plate(settings: workflow.StainSettings, plate: str | os.PathLike, output: str | os.PathLike, *,
                cluster: str | None = None, channel: str | None = None, axes: str | None = None,
                progress: Callable[[int, int], None] | None = None, cancel=None) -> list[dict]:
    """Stain every field of the HCS ``plate`` into ONE new plate ``output`` with the same layout.

    Plate and well metadata are copied (rows, columns, wells, fields, acquisitions); each field
    of the output holds that field's prediction as a multiscale image (channel names from the
    model, pixel sizes carried over), the same as staining the field alone. One task per field,
    each writing only its own field group; the plate appears at ``output`` when all are done,
    and a failure leaves nothing there. Returns one summary per field, in plate order.
    """
    from ..io.ome_zarr_plate_writer import StagedPlate

    plate = Path(plate).expanduser()
    layout, output = plan_plate(plate, output, model=settings.model)
    values = _settings_for_workers(settings)
    relative = layout.field_paths()
    with StagedPlate(output, layout) as staged, connect(cluster, worker_env=LOCAL_WORKER_ENV) as client:
        jobs = [(str(plate / r), str(staged.field(r)), values, channel, axes, True) for r in relative]
        results = run_jobs(stain_file, jobs, client=client, names=[str(plate / r) for r in relative],
                           progress=progress, cancel=cancel)
    for result, r in zip(results, relative):  # where each field is now, not where it was staged
        result["output"] = str(output / r)
    return results
