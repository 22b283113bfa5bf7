"""Throughput of `predict` over many files: in this process, on local:1 and on local:2 workers.

Inputs: crops of a real brightfield plane (sephace set 1), one TIFF each; model: the bundled
2D demo U-Net. Every configuration runs the same files through workflows.stain_files.stain_many
(one task per file). Cluster runs include starting the cluster (each worker imports torch and
loads the model once), so the start-up is also timed on its own. From the single-process run's
per-tile cost the script prints what N workers, each on its own GPU, would give on paper.

    python bench/bench_scale_out.py --files 6 --size 512
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=6)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main()
