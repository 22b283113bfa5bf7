"""Big images on this machine: one slide-sized plane in bands (here and on local:2), and a
10000 x 10000 IHC region through `virtual-stain deepliif`; time and peak memory per process.

    python bench/bench_big_images.py [--side 4096] [--band-rows 2048] [--deepliif-side 10000]

Inputs are real images tiled to size (mirrored, so there are no seams of zeros): the sephace
set 1 brightfield plane for staining (bundled 2D demo U-Net), ``ihc-regions/ROI_1.png`` for
DeepLIIF (bundled ``deepliif-small``). Every command runs as its own process, as a user runs
it, so its peak resident memory is its own (``ru_maxrss`` of the finished child); a
LocalCluster's workers report theirs through ``Client.run``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DATA, brightfield_and_dapi, machine, table, update_results

SECTION = "Big images: bands on workers, a 10000x10000 DeepLIIF region (bench_big_images.py)"


def mirrored(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (Y, X, ...) repeated with mirroring to ``side`` x ``side``."""
    reps = [-(-side // image.shape[0]), -(-side // image.shape[1])]
    rows = [image if i % 2 == 0 else image[::-1] for i in range(reps[0])]
    column = np.concatenate(rows, axis=0)
    cols = [column if j % 2 == 0 else column[:, ::-1] for j in range(reps[1])]
    return np.ascontiguousarray(np.concatenate(cols, axis=1)[:side, :side])


# Runs the CLI and says its own peak resident memory last (RUSAGE_CHILDREN would give the largest child so far).
_REPORTING = ("import resource, sys\n"
              "from napari_virtual_stain.cli import main\n"
              "code = main(sys.argv[1:])\n"
              "sys.stderr.write('PEAK_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
              "sys.exit(code)\n")


def timed_command(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of one command in its own process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _REPORTING, *args], check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    peak_kb = int(done.stderr.strip().splitlines()[-1].split()[-1])
    return seconds, peak_kb / 1024


def bands_on_workers(source: Path, out: Path, band_rows: int) -> tuple[float, list[float]]:
    """stain_in_bands on a LocalCluster of 2 workers started here; wall seconds and each worker's peak MB."""
    from distributed import Client, LocalCluster

    from napari_virtual_stain.workflows.stain import StainSettings
    from napari_virtual_stain.workflows.stain_bands import stain_in_bands
    from napari_virtual_stain.engine.distributed import LOCAL_WORKER_ENV

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=LOCAL_WORKER_ENV) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        started = time.perf_counter()
        stain_in_bands(StainSettings(model="demo-2d-nuclei-membrane", device="cpu"), source, out, band_rows,
                       cluster=cluster.scheduler_address)
        seconds = time.perf_counter() - started
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return seconds, sorted(peaks.values())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--side", type=int, default=4096)
    p.add_argument("--band-rows", type=int, default=2048)
    p.add_argument("--deepliif-side", type=int, default=10000, help="0: skip the DeepLIIF region")
    args = p.parse_args()
    started = time.perf_counter()
    header = machine()
    import tifffile
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        brightfield, _ = brightfield_and_dapi(1)
        plane = mirrored(brightfield[brightfield.shape[0] // 2], args.side)
        source = tmp / "slide.tif"
        tifffile.imwrite(source, plane)
        model = ["--model", "demo-2d-nuclei-membrane", "--device", "cpu"]
        whole_s, whole_mb = timed_command(["predict", str(source), "-o", str(tmp / "whole.tif"), *model])
        rows.append([f"predict {args.side}x{args.side}, one process, no bands", f"{whole_s:.1f}", f"{whole_mb:.0f}"])
        here_s, here_mb = timed_command(["predict", str(source), "-o", str(tmp / "bands.tif"), *model,
                                         "--band-rows", str(args.band_rows)])
        rows.append([f"the same in bands of {args.band_rows} rows, one process", f"{here_s:.1f}", f"{here_mb:.0f}"])
        cluster_s, peaks = bands_on_workers(source, tmp / "cluster.tif", args.band_rows)
        rows.append(["the same bands on local:2 (cluster already started; this process writes the file)",
                     f"{cluster_s:.1f}", "workers: " + ", ".join(f"{v:.0f}" for v in peaks)])
        same = np.array_equal(tifffile.imread(tmp / "bands.tif"), tifffile.imread(tmp / "whole.tif"))
        close = float(np.abs(tifffile.imread(tmp / "cluster.tif") - tifffile.imread(tmp / "whole.tif")).max())

        deepliif_note = ""
        if args.deepliif_side:
            roi = np.asarray(Image.open(DATA / "deepliif-sample" / "ihc-regions" / "ROI_1.png").convert("RGB"))
            region = tmp / "region.tif"
            tifffile.imwrite(region, mirrored(roi, args.deepliif_side), photometric="rgb")
            out = tmp / "deepliif"
            seconds, peak = timed_command(["deepliif", str(region), "-o", str(out), "--model", "deepliif-small",
                                           "--device", "cpu"])
            info = json.loads((out / "region.json").read_text())
            rows.append([f"deepliif {args.deepliif_side}x{args.deepliif_side} (deepliif-small, fp32, one process)",
                         f"{seconds:.1f}", f"{peak:.0f}"])
            deepliif_note = (f" DeepLIIF region: {info['num_total']} cells ({info['percent_pos']:.1f}% positive); "
                             f"networks {info['timing_s']['networks']:.0f} s, cells {info['timing_s']['cells']:.0f} s "
                             "(from its JSON); outputs above 64 megapixels go through an on-disk zarr store.")
    body = (f"Machine: {header}.\n"
            f"Command: `python bench/bench_big_images.py --side {args.side} --band-rows {args.band_rows} "
            f"--deepliif-side {args.deepliif_side}` ({time.perf_counter() - started:.0f} s in all). "
            "One timed run each, on a shared 2-core machine.\n\n"
            + table(["run", "wall s", "peak memory MB"], rows)
            + f"\n\nBands in one process equal the whole run bit for bit: {same}; on the cluster's workers (one "
              f"thread each) the largest difference is {close:.1e}.{deepliif_note} Two workers on two cores "
              "cannot beat one process using both cores for the same convolutions; bands are for a cluster "
              "with more machines (each band task reads only its rows and the tiles' context).")
    print(body)
    update_results(SECTION, body)


if __name__ == "__main__":
    main()
