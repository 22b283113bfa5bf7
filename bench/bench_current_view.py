"""Current-view latency: a 1024x1024 view with each bundled 2D model, vs predicting everything.

What a user waits for after pressing Run on "current view" (model already loaded, the
layer's normalisation statistics cached, as in the dock), compared in the same run with the
naive way of getting the same pixels: predict the whole image and crop the view. The image is
a real brightfield plane (sephace set 1, 1024x1344) tiled 2x2 into 2048x2688.

    python bench/bench_current_view.py [--quick] [--threads N] [--model NAME ...]

By default both bundled 2D models (the dock's default ``demo-2d-nuclei-membrane`` and
``label-free-nuclei-2d``), one after the other, each with its own table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import brightfield_and_dapi, interleaved_times, machine, table, update_results

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import CheckpointError
from napari_virtual_stain.models.registry import load_model, resolve_model
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain, run_stain_reusing
from napari_virtual_stain.tasks.view_cache import ViewCache

MODELS = ["demo-2d-nuclei-membrane", "label-free-nuclei-2d"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--model", nargs="+", default=MODELS, help=f"bundled or user models (default: {' '.join(MODELS)})")
    args = parser.parse_args()
    for name in args.model:
        try:
            resolve_model(name)
        except CheckpointError as err:
            parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    body = f"Machine: {machine()}\n\n" + "\n\n".join(bench_model(name, 1 if args.quick else 3) for name in args.model)
    print(body)
    update_results("Current-view latency (bench_current_view.py)", body, per_cpu=True)


def bench_model(name: str, repeat: int) -> str:
    """The table for one model (loaded afresh: its load time is part of it)."""
    t0 = time.perf_counter()
    model, card = load_model(name)
    predictor = Predictor(model, card)
    load_s = time.perf_counter() - t0
    plane = brightfield_and_dapi(1)[0][2]
    image = np.tile(plane, (2, 2))  # 2048 x 2688
    view = Region((512, 832), (1536, 1856))  # 1024 x 1024 in the middle

    t0 = time.perf_counter()
    first = run_stain(predictor, image, region=view)  # computes the whole-image statistics
    cold_s = time.perf_counter() - t0
    stats = first.stats
    # A pan of 128 pixels to the right after the view was predicted: the dock's ViewCache then
    # sends only the newly visible 1024 x 128 strip (plus context) through the network.
    cache = ViewCache(card.n_out, image.shape)
    cache.store(view, first.data)
    known = cache.known.copy()
    panned = Region((512, 960), (1536, 1984))

    def pan():
        cache.known = known.copy()  # as right after the first view, every round
        return run_stain_reusing(predictor, image, cache, panned, stats=stats)

    best = interleaved_times({
        "view": lambda: run_stain(predictor, image, region=view, stats=stats),
        "pan": pan,
        "whole": lambda: run_stain(predictor, image, stats=stats),
    }, rounds=repeat, warmup=False)
    (view_s, view_cpu), (pan_s, pan_cpu), (whole_s, whole_cpu) = best["view"], best["pan"], best["whole"]
    whole = run_stain(predictor, image, stats=stats).data[(slice(None),) + view.slices]
    diff = float(np.abs(whole - first.data).max())

    rows = [
        ["current view 1024x1024 (ours, warm)", f"{view_s:.2f}", f"{view_cpu:.2f}", "1.00"],
        ["pan 128 px after a view (ours: only the new strip)", f"{pan_s:.2f}", f"{pan_cpu:.2f}",
         f"{pan_s / view_s:.2f}"],
        ["first run on a new layer (+ whole-image statistics)", f"{cold_s:.2f}", "", f"{cold_s / view_s:.2f}"],
        ["baseline: whole 2048x2688 image, then crop", f"{whole_s:.2f}", f"{whole_cpu:.2f}",
         f"{whole_s / view_s:.2f} (CPU {whole_cpu / view_cpu:.2f})"],
        ["model load (once per session)", f"{load_s:.2f}", "", ""],
    ]
    shape = ", ".join(f"{k} {v}" for k, v in card.arch_args.items() if k not in ("in_channels", "out_channels"))
    return (f"Model `{name}` ({card.architecture}: {shape}; tile {card.tile}, overlap "
            f"{card.overlap}, precision {predictor.precision}, batch {predictor.batch_size}).\n\n"
            + table(["what", "wall s", "CPU s", "x ours"], rows)
            + f"\n\nMax abs difference between the view and the same pixels of the whole-image run: {diff:.4f} "
              "(outputs in [0, 1]; differences come only from where tile borders fall).")


if __name__ == "__main__":
    main()
