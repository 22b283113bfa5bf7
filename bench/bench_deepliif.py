"""DeepLIIF pipeline timings: networks vs cell post-processing, small and full-size networks.

    python bench/bench_deepliif.py [--quick] [--threads N] [--official | --official-only]

On the three real IHC regions of ``deepliif-sample/ihc-regions`` (ROI_1 1381x949, ROI_7
1250x995, ROI_127 1404x1179), in one run on this machine:

- the whole pipeline (Predictor over 512 tiles with 64 px overlap and blending, then cells:
  labels, per-cell table, classification) with the bundled small model, precision "auto"
  (bf16 on a CPU that has it) and fp32 on ROI_1, with the differences bf16 makes;
- the full-size networks (the paper's: 4 x ResNet-9blocks ngf 64 + 5 x U-Net-512 ngf 64,
  random weights: timing only) on one 512 x 512 tile, extrapolated to each image by its
  tile count (running all tiles of three images at full size would take most of an hour on
  this shared CPU);
- current-view latency (a 512 x 512 view of ROI_1, model loaded) and the recount latency
  when a threshold moves (size/marker: table only; segmentation: relabel);
- DeepLIIF's official tool (ANCHORS.md, same kind of machine, idle): 142.6 s for ROI_1,
  12.4 s per 512 tile, post-processing < 0.1 s after a ~10 s numba start.

With ``--official`` (or ``--official-only``), when the official tool's venv exists
(``../shared/peer-deepliif/setup.sh``; found at $DEEPLIIF_PEER_VENV, ../shared/peer-deepliif/venv
or /tmp/peer-venv): both tools as whole processes on ROI_1 with the same full-size release
folder, the ratio, and where our time goes (``_deepliif_peer.py``), in their own section.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import DATA, machine, table, update_results
import _deepliif_peer as peer

from napari_virtual_stain.engine.device import cpu_has_native_bf16
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.engine.tiling import n_tiles
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.tasks.deepliif import load_deepliif_model, run_deepliif
from napari_virtual_stain.tasks.deepliif_cells import Thresholds, analyse_cells, model_thresholds
from napari_virtual_stain.tasks.region import Region

ROIS = ("ROI_1", "ROI_7", "ROI_127")
OFFICIAL_ROI1_S, OFFICIAL_TILE_S = 142.6, 12.4


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def pipeline(predictor, image):
    result, net_s, net_cpu = timed(lambda: run_deepliif(predictor, image, analyse=False))
    cells, post_s, _ = timed(lambda: result.analyse())
    classes, cls_s, _ = timed(lambda: cells.classify(Thresholds()))
    return result, classes, net_s, net_cpu, post_s + cls_s


def big_region_post_processing(result, side: int) -> list[list[object]]:
    """Cells of a ``side`` x ``side`` region read from zarr: time and peak memory of the analysis."""
    import tempfile
    import tracemalloc

    import zarr

    reps = (-(-side // result.images["Segmentation"].shape[0]), -(-side // result.images["Segmentation"].shape[1]), 1)
    folder = tempfile.mkdtemp(prefix="bench-deepliif-", suffix=".zarr")
    root = zarr.open_group(folder, mode="w")
    arrays = {}
    for name in ("Segmentation", "Marker"):
        big = root.create_array(name, shape=(side, side, 3), chunks=(1024, 1024, 3), dtype="uint8")
        tiled = np.tile(result.images[name], reps)[:side, :side]
        for start in range(0, side, 1024):
            big[start:start + 1024] = tiled[start:start + 1024]
        del tiled
        arrays[name] = big
    tracemalloc.start()
    cells, seconds, _ = timed(lambda: analyse_cells(arrays["Segmentation"], arrays["Marker"]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _, recount_s, _ = timed(lambda: [cells.classify(Thresholds(size=s)) for s in range(10)])
    return [[f"{side}x{side}", cells.n_cells, f"{seconds:.1f}", f"{recount_s / 10 * 1000:.1f}",
             f"{peak / 2**20:.0f}", f"{cells.labels.nbytes / 2**20:.0f}"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="full-size tile in bf16 only")
    parser.add_argument("--big", type=int, default=10000,
                        help="side of the synthetic square region for the post-processing memory test (0: skip)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest when the 2 cores are shared with others)")
    parser.add_argument("--official", action="store_true",
                        help="also run DeepLIIF's official tool on ROI_1, full-size networks, and compare")
    parser.add_argument("--official-only", action="store_true", help="only the comparison with the official tool")
    args = parser.parse_args()
    if args.official or args.official_only:
        official_comparison()
        if args.official_only:
            return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    images = {name: load_image(DATA / "deepliif-sample" / "ihc-regions" / f"{name}.png").data[..., :3]
              for name in ROIS}

    model, card = load_deepliif_model("deepliif-small")
    small = Predictor(model, card, device="cpu")
    rows, counts = [], {}
    for name, image in images.items():
        result, classes, net_s, net_cpu, post_s = pipeline(small, image)
        tiles = n_tiles(image.shape[:2], small.tile, small.overlap)
        counts[name] = classes
        rows.append([f"{name} {image.shape[1]}x{image.shape[0]}", "small (bundled)", small.precision, tiles,
                     f"{net_s:.1f}", f"{net_cpu:.1f}", f"{post_s:.2f}", f"{net_s + post_s:.1f}",
                     f"{classes.total} ({classes.percent_positive:.1f}% +)"])
        if name == "ROI_1":
            roi1_small = net_s + post_s
            roi1_result = result
    # fp32 reference on ROI_1: what bf16 changes
    fp32 = Predictor(load_deepliif_model("deepliif-small")[0], card, device="cpu", precision="fp32")
    ref, ref_classes, net32, cpu32, post32 = pipeline(fp32, images["ROI_1"])
    rows.append(["ROI_1", "small (bundled)", "fp32", rows[0][3], f"{net32:.1f}", f"{cpu32:.1f}", f"{post32:.2f}",
                 f"{net32 + post32:.1f}", f"{ref_classes.total} ({ref_classes.percent_positive:.1f}% +)"])
    diffs = {k: int(np.abs(roi1_result.images[k].astype(int) - ref.images[k].astype(int)).max())
             for k in ref.images}

    # Full-size networks, one 512 tile, random weights (timing only).
    torch.manual_seed(0)
    full_args = deepliif_arch_args("full")
    full_card = deepliif_card("full-size (random)", full_args)
    full_rows = []
    tile = np.random.default_rng(0).integers(0, 256, (3, 512, 512)).astype(np.uint8)
    for precision in (["auto"] if args.quick else ["auto", "fp32"]):
        full = Predictor(DeepLIIFNet(**full_args).eval(), full_card, device="cpu", precision=precision)
        _, tile_s, tile_cpu = timed(lambda: full.predict(tile))
        per_image = []
        for name, image in images.items():
            n = n_tiles(image.shape[:2], full.tile, full.overlap)
            per_image.append(f"{name}: {n} tiles ≈ {n * tile_s:.0f} s")
        full_rows.append(["full-size (paper)", full.precision, f"{tile_s:.1f}", f"{tile_cpu:.1f}",
                          f"{OFFICIAL_TILE_S / tile_s:.2f}x", "; ".join(per_image)])
        del full

    # Current view and recount latency (ROI_1, small model, loaded).
    image = images["ROI_1"]
    view = Region((218, 434), (730, 946))  # 512 x 512 in the middle
    # the dock's view runs the card's cell rules (its split and growth); deepliif's alone for comparison
    own = model_thresholds(small.card)
    own_view = lambda: run_deepliif(small, image, region=view, segmentation_threshold=own.segmentation,
                                    split=own.split, grow=own.grow)
    view_result = run_deepliif(small, image, region=view)  # warm: the dock's second and later views
    own_view()
    view_s = min(timed(lambda: run_deepliif(small, image, region=view))[1] for _ in range(3))
    own_view_s = min(timed(own_view)[1] for _ in range(3))
    # where the view's time goes: the networks (with the output conversion) and the cells at the card's rules
    maps_only = run_deepliif(small, image, region=view, analyse=False)
    maps_s = min(timed(lambda: run_deepliif(small, image, region=view, analyse=False))[1] for _ in range(3))
    own_cells_s = min(timed(lambda: maps_only.analyse(own.segmentation, "40x", own.split, own.grow))[1]
                      for _ in range(3))
    cells = view_result.cells
    _, classify_s, _ = timed(lambda: [cells.classify(Thresholds(size=s, marker=200)) for s in range(100)])
    whole_cells = roi1_result.cells
    _, classify_whole_s, _ = timed(lambda: [whole_cells.classify(Thresholds(size=s, marker=200)) for s in range(100)])
    seg = roi1_result.images["Segmentation"]
    _, relabel_s, _ = timed(lambda: analyse_cells(seg, roi1_result.images["Marker"], segmentation_threshold=120))

    big_rows = big_region_post_processing(roi1_result, args.big) if args.big else []

    body = (
        f"Machine: {machine()}; torch threads set to {args.threads}.\n"
        f"Command: `python bench/bench_deepliif.py{' --quick' if args.quick else ''} --threads {args.threads}` "
        f"({time.perf_counter() - started:.0f} s in all).\n\n"
        "### Whole pipeline, measured (tile 512, overlap 64, blended; networks = Predictor, cells = labels + table + classes)\n"
        + table(["image", "networks", "precision", "tiles", "networks s", "networks CPU s", "cells s", "total s",
                 "cells found"], rows)
        + "\n\nbf16 vs fp32 on ROI_1, max difference in 8-bit levels: "
        + ", ".join(f"{k} {v}" for k, v in diffs.items())
        + f"; cells {counts['ROI_1'].total} vs {ref_classes.total}, positive "
          f"{counts['ROI_1'].percent_positive:.1f}% vs {ref_classes.percent_positive:.1f}%.\n\n"
        "The \"cells found\" column has no ground truth behind it: read it as a timing workload, not as a Ki67 index (quality on real held-out data: the section \"DeepLIIF on real tissue\"). In the densest region (ROI_1, brown cytoplasm around many nuclei) the bundled small model merges touching cells.\n\n"
        f"Against DeepLIIF's official tool on ROI_1 ({OFFICIAL_ROI1_S} s, full-size networks, idle machine): "
        f"the small pipeline takes {roi1_small:.1f} s, {OFFICIAL_ROI1_S / roi1_small:.1f}x less.\n\n"
        "### Full-size networks (the paper's sizes, random weights), one 512x512 tile, extrapolated by tile count\n"
        "Our own composite (`DeepLIIFNet` at the paper's sizes), which no bundled model uses: an official "
        "release folder runs through the rebuilt translators instead (section \"DeepLIIF full-size: ours vs "
        "the official tool\", both tools measured in one run).\n\n"
        + table(["networks", "precision", "s per tile", "CPU s per tile", "official 12.4 s / ours", "whole images"],
                full_rows)
        + "\n\n### Interactive latencies (ROI_1, small model already loaded)\n"
        + table(["action", "seconds"], [
            [f"Run on a 512x512 current view (networks + cells at the card's thresholds: split {own.split} px, "
             f"grown {own.grow} px), warm, best of 3, {args.threads} thread(s)", f"{own_view_s:.2f}"],
            ["of the view at the card's rules: the networks and the 8-bit maps", f"{maps_s:.2f}"],
            ["of the view at the card's rules: the cells (labels, split, growth, table)", f"{own_cells_s:.2f}"],
            ["the same view with deepliif's cell rules (no split, no growth)", f"{view_s:.2f}"],
            ["move the size or marker threshold: recount, 512x512 view", f"{classify_s / 100 * 1000:.3f} ms"],
            ["move the size or marker threshold: recount, whole ROI_1", f"{classify_whole_s / 100 * 1000:.3f} ms"],
            ["move the segmentation threshold: relabel whole ROI_1 (no network)", f"{relabel_s:.2f}"],
        ])
        + ("\n\n### Post-processing of a very large region, from an on-disk zarr store\n"
           "The ROI_1 outputs tiled to a square, stored as zarr (as the dock and the CLI do above 64 megapixels); "
           "peak = the largest Python/numpy allocation during cell analysis (tracemalloc), beside the label image "
           "itself (4 bytes per pixel).\n" + table(["region", "cells", "analyse s", "recount ms", "peak MB", "label image MB"],
                                                   big_rows) if big_rows else "")
        + "\n\nThe official tool's numbers come from ANCHORS.md (measured on an idle machine of this kind); ours were "
          "measured on a shared machine at the load shown, so wall-clock ratios favour the official tool."
    )
    print(body)
    update_results("DeepLIIF pipeline (bench_deepliif.py)", body)


def bf16_note(times: dict[str, float], diffs: dict[str, int] | None) -> str:
    """One paragraph on bf16 where this CPU has it natively (else on why it was not run)."""
    if diffs is None:
        return "This CPU has no native bf16, so bf16 was not run (it is emulated and slower here).\n\n"
    worst = max(diffs.values())
    return (f"bf16 on this CPU (native), the same command with `--precision bf16`: {times['ours bf16']:.1f} s, "
            f"{times['official'] / times['ours bf16']:.2f}x the official tool, but its files differ from our fp32 "
            "files by up to " + ", ".join(f"{k} {v}" for k, v in diffs.items()) + " levels: "
            + ("within" if worst <= 2 else "outside") + " the 2 levels that count as fp32's answer"
            + ("" if worst <= 2 else ", so fp32 stays the default for DeepLIIF") + ".\n\n")


def official_comparison() -> None:
    """Both tools, whole processes, full-size networks, ROI_1; then our time split by part."""
    python = peer.peer_python()
    if python is None:
        print("The official DeepLIIF tool is not set up here (run ../shared/peer-deepliif/setup.sh): "
              "no comparison was run.")
        return
    started = time.perf_counter()
    header = f"Machine: {machine()} (both tools use torch's default threads).\n"
    model = peer.full_size_release(python)
    image = DATA / "deepliif-sample" / "ihc-regions" / "ROI_1.png"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as work:
        times = peer.whole_processes(image, model, python, Path(work))
        diffs = peer.modality_differences(image, Path(work))
        if cpu_has_native_bf16():  # what "auto" would choose here: is it fast, and is it fp32's answer?
            times["ours bf16"] = peer.ours_process(image, model, Path(work) / "ours-bf16", "bf16")
            bf16_diffs = peer.modality_differences(image, Path(work), "ours-bf16")
    parts, tiles = peer.where_the_time_goes(image, model)
    ratio = times["official"] / times["ours"]
    body = (
        header
        + "Command: `python bench/bench_deepliif.py --official-only` "
        f"({time.perf_counter() - started:.0f} s in all). Same full-size release folder (deepliif 1.2.7's own "
        "`make_model.py`: 4 x ResNet-9blocks ngf 64 + 5 x U-Net-512, random weights, seed 0), same image, "
        "one process each, from start to the files on disk.\n\n"
        + table(["tool", "command", "whole process s", "official / ours"], [
            ["ours", "`virtual-stain deepliif ROI_1.png --model FOLDER -o OUT --precision fp32`",
             f"{times['ours']:.1f}", f"{ratio:.2f}x"],
            ["official deepliif 1.2.7", "`deepliif test --input-dir D --model-dir FOLDER --tile-size 512`",
             f"{times['official']:.1f}", "1.00x"]])
        + "\n\nLargest difference between the two tools' files, 8-bit levels (deepliif pastes tile centres, we "
          "blend overlapping tiles; random weights, so the values are no quality measure): "
        + ", ".join(f"{k} {v}" for k, v in diffs.items()) + ".\n\n"
        + bf16_note(times, bf16_diffs if "ours bf16" in times else None)
        + f"### Where our time goes (same image and folder, in one process, {tiles} tiles of 512, overlap 64)\n"
        + table(["part", "seconds"], parts)
    )
    print(body)
    update_results("DeepLIIF full-size: ours vs the official tool (bench_deepliif.py --official)", body, per_cpu=True)


if __name__ == "__main__":
    main()
