"""One big image stained as bands of rows, one task each, on a dask.distributed cluster.

A slide too big for one worker's patience is cut into bands of whole rows. Each task predicts
its band with the Predictor's ``rows=`` (only the tiles that reach the band, weighted as in the
whole image's blend, normalised with the whole image's statistics computed once here), and
writes it into a shared zarr array whose chunks never straddle two bands, so tasks never write
the same chunk. The assembled output is the single-process run's, value for value; it is then
written as the usual TIFF or OME-Zarr (with its pyramid) and the scratch array removed.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine.distributed import LOCAL_WORKER_ENV, connect, run_jobs
from ..engine.normalise import compute_stats, flat_channels_warning
from ..errors import InputError
from ..io.ome_zarr_reader import ZARR_SUFFIXES
from ..tasks.arrays import layout_for, to_channels_first
from . import stain as workflow
from .stain_files import channels_first

COLUMNS_PER_CHUNK = 2048  # chunk width of the scratch array (its height is the band's)


def _prepared(source: str, settings: workflow.StainSettings, channel: str | None, axes: str | None):
    """(predictor, the image channels first, its LoadedImage, rgb) as a task and the client both see it."""
    from ..io.tiff_reader import load_image

    predictor = workflow.predictor_for(settings)
    image = load_image(source, axes=axes)
    data, rgb = channels_first(image, predictor.card, channel)
    layout = layout_for(data, predictor.card, rgb, Path(source).name)
    return predictor, to_channels_first(data, layout), image, rgb


def stain_band(source: str, scratch: str, lo: int, hi: int, settings: dict, stats: dict,
               channel: str | None = None, axes: str | None = None) -> int:
    """Predict rows ``lo:hi`` of ``source`` into the zarr array at ``scratch``: one task. Returns the rows written."""
    import zarr

    settings = workflow.StainSettings(**settings)
    predictor, data, _, _ = _prepared(source, settings, channel, axes)
    out = zarr.open_array(scratch, mode="r+")
    predictor.predict(data, out=out, rows=slice(lo, hi), stats=stats, tta=settings.tta)
    return hi - lo


def band_edges(rows: int, band_rows: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` covering ``rows`` in bands of ``band_rows`` (the last one shorter)."""
    if band_rows < 1:
        raise InputError(f"--band-rows must be a positive number of rows, not {band_rows}.")
    return [(lo, min(lo + band_rows, rows)) for lo in range(0, rows, band_rows)]


def stain_in_bands(settings: workflow.StainSettings, source: Path, target: Path, band_rows: int, *,
                   cluster: str | None = None, channel: str | None = None, axes: str | None = None,
                   progress: Callable[[int, int], None] | None = None, cancel=None) -> dict:
    """Stain the one 2D image ``source`` into ``target`` (.tif or .ome.zarr), its bands as tasks."""
    import zarr

    from ..io.ome_zarr_writer import save_ome_zarr
    from ..io.tiff_writer import save_tiff
    from ..models.registry import model_kind, model_location

    settings.validate()
    predictor, data, image, _ = _prepared(str(source), settings, channel, axes)
    card = predictor.card
    if card.spatial_dims != 2 or data.ndim != 3:
        raise InputError(f"Bands are for one 2D image; {Path(source).name} has shape {tuple(data.shape)} "
                         "(stacks and plates run one task per file or field: leave out --band-rows).")
    rows, cols = (int(n) for n in data.shape[1:])
    edges = band_edges(rows, band_rows)
    stats = compute_stats(data, card.input_normalisation)  # the whole image's, once, for every band
    values = asdict(settings)
    if model_kind(settings.model) == "checkpoint":  # a name from this user's model folder: send its path
        values["model"] = str(model_location(settings.model).resolve())
    scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.bands.zarr")
    try:
        zarr.open_array(str(scratch), mode="w", shape=(card.n_out, rows, cols), dtype="float32",
                        chunks=(1, min(band_rows, rows), min(COLUMNS_PER_CHUNK, cols)), fill_value=np.nan)
        jobs = [(str(source), str(scratch), lo, hi, values, stats, channel, axes) for lo, hi in edges]
        with connect(cluster, worker_env=LOCAL_WORKER_ENV) as client:
            run_jobs(stain_band, jobs, client=client, names=[f"{Path(source).name} rows {lo}-{hi}" for lo, hi in edges],
                     progress=progress, cancel=cancel)
        result = np.asarray(zarr.open_array(str(scratch), mode="r")[:])
        size = image.pixel_size_um
        if str(target).lower().endswith(ZARR_SUFFIXES):
            save_ome_zarr(target, result, "CYX", list(card.output_channels), size)
        else:
            save_tiff(target, result, "CYX", list(card.output_channels), size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    warnings = [w for w in (flat_channels_warning(stats, list(card.input_channels)),
                            redundancy_warning(predictor, (rows, cols), edges)) if w]
    return {"input": str(source), "output": str(target), "shape": tuple(int(v) for v in result.shape),
            "bands": len(edges), "warnings": warnings}


def redundancy_warning(predictor, spatial: tuple[int, int], edges: list[tuple[int, int]]) -> str | None:
    """A sentence when bands this thin make the tiles they share run more than a quarter more often."""
    from ..engine.tiling import tile_starts

    tile, overlap = predictor._tile_for(spatial)
    strips = len(tile_starts(spatial[0], tile[0], overlap[0]))
    run = sum(len(predictor.strips_for(slice(lo, hi), spatial, tile, overlap)) for lo, hi in edges)
    if run <= 1.25 * strips:
        return None
    return (f"Bands of {edges[0][1] - edges[0][0]} rows with tiles of {tile[0]} rows ran {run} tile rows instead of "
            f"{strips}: bands of at least {4 * tile[0]} rows waste less.")
