"""Throughput of `predict` over many files: in this process, on local:1 and on local:2 workers.

Inputs: crops of a real brightfield plane (sephace set 1), one TIFF each; model: the bundled
2D demo U-Net. Every configuration runs the same files through workflows.stain_files.stain_many
(one task per file). Cluster runs include starting the cluster (each worker imports torch and
loads the model once), so the start-up is also timed on its own. From the single-process run's
per-tile cost the script prints what N workers, each on its own GPU, would give on paper.

    python bench/bench_scale_out.py --files 6 --size 512
    python bench/bench_scale_out.py --plate [--wells 4 --planes 8 --size 512]

``--plate`` instead times a small HCS plate of z-stacks (one field per well; planes of the
real sephace focal series, mirrored in z to ``--planes``) through ``virtual-stain predict
plate.zarr -o out.zarr``: one output plate, one task per field, in its own process, on local:1
and on local:2, with each process's (each worker's) peak resident memory. The plate is written
to a temporary folder, never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch

from _common import brightfield_and_dapi, machine, table, update_results

from napari_virtual_stain.engine.distributed import connect
from napari_virtual_stain.engine.tiling import n_tiles
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.workflows.stain import StainSettings, predictor_for
from napari_virtual_stain.workflows.stain_files import expand_inputs, plan_outputs, stain_many


PLATE_SECTION = "Scale-out: a plate of stacks through predict (bench_scale_out.py --plate)"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=6)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--plate", action="store_true", help="time a plate of z-stacks instead of files")
    p.add_argument("--wells", type=int, default=4, help="--plate: wells (one field each)")
    p.add_argument("--planes", type=int, default=8, help="--plate: planes per stack")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.plate:
        bench_plate(args)
    else:
        bench_files(args)


def bench_files(args) -> None:
    started = time.perf_counter()
    header = machine()
    brightfield, _ = brightfield_and_dapi(1)
    plane = brightfield[brightfield.shape[0] // 2]
    settings = StainSettings(model="demo-2d-nuclei-membrane", device="cpu")
    predictor = predictor_for(settings)
    tile, overlap = predictor._tile_for((args.size, args.size))
    tiles_per_file = n_tiles((args.size, args.size), tile, overlap)

    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        inputs.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.files):
            y = int(rng.integers(0, plane.shape[0] - args.size))
            x = int(rng.integers(0, plane.shape[1] - args.size))
            save_tiff(inputs / f"crop{i}.tif", plane[y:y + args.size, x:x + args.size], "YX")
        sources = expand_inputs([inputs])
        for cluster in (None, "local:1", "local:2"):
            out = tmp / f"out-{cluster or 'here'}".replace(":", "")
            pairs = plan_outputs(sources, out)
            t0 = time.perf_counter()
            stain_many(settings, pairs, cluster=cluster)
            seconds[cluster] = time.perf_counter() - t0
        for cluster in ("local:1", "local:2"):
            t0 = time.perf_counter()
            with connect(cluster) as client:
                client.wait_for_workers(int(cluster.split(":")[1]))
            startup = time.perf_counter() - t0
            rows.append([cluster, f"{seconds[cluster]:.1f}", f"{startup:.1f}",
                         f"{args.files / seconds[cluster]:.2f}",
                         f"{args.files / max(seconds[cluster] - startup, 1e-9):.2f}"])
    here = seconds[None]
    rows.insert(0, ["this process", f"{here:.1f}", "0", f"{args.files / here:.2f}", f"{args.files / here:.2f}"])
    per_tile = here / (args.files * tiles_per_file)
    ratio = (args.files / max(seconds["local:2"] - float(rows[2][2]), 1e-9)) / \
        (args.files / max(seconds["local:1"] - float(rows[1][2]), 1e-9))
    body = "\n".join([
        f"Machine: {header}.",
        f"Command: `python bench/bench_scale_out.py --files {args.files} --size {args.size}` "
        f"({time.perf_counter() - started:.0f} s in all). One timed run per configuration (not best-of): "
        "on this shared 2-core machine the numbers are rough.",
        f"Inputs: {args.files} crops of {args.size}x{args.size} from a real brightfield plane (sephace set 1); "
        f"model demo-2d-nuclei-membrane on the CPU, {tiles_per_file} tile(s) of {tile} per file.",
        "",
        table(["where", "wall s (all files, with start-up)", "cluster start-up s (timed apart)",
               "files/s with start-up", "files/s, an empty cluster's start-up taken off"], rows),
        "",
        f"2 workers / 1 worker, start-up taken off: {ratio:.2f}x (2 cores shared with other jobs).",
        f"Per-tile cost in this process: {per_tile:.2f} s (CPU, 1 thread). On paper, N workers that each "
        f"own a GPU scale the task count linearly while the work is one file per task: N x (1 / per-file "
        "time on that GPU) files/s, bounded by how fast the shared file system reads inputs and takes outputs; "
        "the per-tile cost on a GPU has to be measured there (this machine has none).",
    ])
    print(body)
    update_results("Scale-out over many files (bench_scale_out.py)", body)


def write_plate(path: Path, wells: int, planes: int, size: int) -> Path:
    """An HCS plate of ``wells`` wells in one row, one field each: ``planes`` x ``size`` x ``size`` real brightfield."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    from napari_virtual_stain.io.ome_zarr_writer import save_ome_zarr

    fmt = FormatV05()
    columns = [str(c + 1) for c in range(wells)]
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, ["A"], columns, [f"A/{c}" for c in columns], fmt=fmt, field_count=1)
    rng = np.random.default_rng(0)
    series = [brightfield_and_dapi(i)[0] for i in (1, 2)]
    for i, column in enumerate(columns):
        stack = series[i % 2]
        order = list(range(len(stack))) + list(range(len(stack) - 2, 0, -1))  # 0..5, 4..1: mirrored in z
        z = [order[k % len(order)] for k in range(planes)]
        y = int(rng.integers(0, stack.shape[1] - size + 1))
        x = int(rng.integers(0, stack.shape[2] - size + 1))
        write_well_metadata(root.require_group("A").require_group(column), [{"path": "0"}], fmt=fmt)
        save_ome_zarr(path / "A" / column / "0", stack[z, y:y + size, x:x + size], "ZYX", n_levels=1)
    return path


# The CLI in a child process of one torch thread, as a worker has: its own wall time (imports
# excluded, the model's loading included, as on a worker) and its own peak resident memory.
_ONE_PROCESS = ("import json, resource, sys, time\n"
                "from napari_virtual_stain.cli import main\n"
                "t = time.perf_counter()\n"
                "code = main(sys.argv[1:])\n"
                "print(json.dumps({'wall': time.perf_counter() - t, "
                "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
                "sys.exit(code)\n")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plate_on_cluster(settings: StainSettings, plate: Path, out: Path, workers: int) -> tuple[float, float, list[float]]:
    """(start-up s, plate s, each worker's peak MB) of the plate on a LocalCluster of ``workers`` started here."""
    from distributed import Client, LocalCluster

    from napari_virtual_stain.engine.distributed import LOCAL_WORKER_ENV
    from napari_virtual_stain.workflows.stain_files import stain_plate

    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=LOCAL_WORKER_ENV) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        stain_plate(settings, plate, out, cluster=cluster.scheduler_address)
        seconds = time.perf_counter() - t0
        peaks = client.run(_peak_mb)
    return startup, seconds, sorted(peaks.values())


def bench_plate(args) -> None:
    from napari_virtual_stain.io.ome_zarr_reader import read_ome_zarr

    started = time.perf_counter()
    header = machine()
    settings = StainSettings(model="demo-2d-nuclei-membrane", device="cpu")
    tile, overlap = predictor_for(settings)._tile_for((args.size, args.size))
    tiles = args.wells * args.planes * n_tiles((args.size, args.size), tile, overlap)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plate-") as tmp:  # under /tmp, never in the repository
        tmp = Path(tmp)
        plate = write_plate(tmp / "plate.zarr", args.wells, args.planes, args.size)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=str(_common.REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run([sys.executable, "-c", _ONE_PROCESS, "predict", str(plate), "-o", str(tmp / "here.zarr"),
                               "--model", settings.model, "--device", "cpu"], env=env, check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        here = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(["this process (1 thread)", "0", f"{here['wall']:.1f}", f"{args.wells / here['wall']:.2f}",
                     f"{here['peak_mb']:.0f}"])
        seconds = {}
        for workers in (1, 2):
            startup, seconds[workers], peaks = plate_on_cluster(settings, plate, tmp / f"local{workers}.zarr", workers)
            rows.append([f"local:{workers}", f"{startup:.1f}", f"{seconds[workers]:.1f}",
                         f"{args.wells / seconds[workers]:.2f}", ", ".join(f"{v:.0f}" for v in peaks)])
        reference = np.asarray(read_ome_zarr(tmp / "here.zarr" / "A/1/0").data)
        largest = max(float(np.abs(np.asarray(read_ome_zarr(tmp / f"local{w}.zarr" / "A/1/0").data) - reference).max())
                      for w in (1, 2))
    per_tile = here["wall"] / tiles
    per_field = here["wall"] / args.wells
    estimate = ", ".join(f"{n}: {n / per_field:.2f}" for n in (1, 2, 4, 8, 16))
    body = "\n".join([
        f"Machine: {header}.",
        f"Command: `python bench/bench_scale_out.py --plate --wells {args.wells} --planes {args.planes} "
        f"--size {args.size}` ({time.perf_counter() - started:.0f} s in all). One timed run per configuration: "
        "on a shared 2-core machine the numbers are rough.",
        f"Input: an HCS plate (NGFF 0.5) of {args.wells} wells x 1 field, each {args.planes} x {args.size} x "
        f"{args.size} uint8 from the real sephace focal series (sets 1 and 2, mirrored in z); output: one plate "
        f"of the same layout, one task per field. Model demo-2d-nuclei-membrane on the CPU, plane by plane: "
        f"{tiles} tile(s) of {tile} in all.",
        "",
        table(["where", "cluster start-up s", "plate s (model loading included)", "fields/s",
               "peak memory MB (per worker)"], rows),
        "",
        f"local:2 / local:1 throughput: {seconds[1] / seconds[2]:.2f}x (2 cores shared with other jobs). "
        f"Largest difference of a worker's field from the one-process run: {largest:.1e}.",
        f"Per-tile cost in one process: {per_tile:.2f} s (CPU, 1 thread), {per_field:.1f} s per field. On paper, "
        f"N workers (one field per task, fields independent) give N x {1 / per_field:.3f} fields/s at this per-tile "
        f"cost ({estimate} fields/s for N = 1, 2, 4, 8, 16); with a GPU per worker, multiply by the per-tile speed-up "
        "measured on that GPU (bench_gpu.py), until the shared file system's read and write rate is the limit.",
    ])
    print(body)
    update_results(PLATE_SECTION, body)


if __name__ == "__main__":
    main()
