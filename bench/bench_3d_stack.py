"""A 64 x 512 x 512 stack through the bundled-size 3D U-Net: time and peak memory.

    python bench/bench_3d_stack.py           # about 5 minutes with --threads 1 on a quiet machine
    python bench/bench_3d_stack.py --quick   # 32 x 256 x 256

Compares, in the same run and on the same voxels, the Predictor (overlapping 3D tiles
fitted to the stack, cross-fade blending, precision "auto", channels_last_3d) with a naive
loop (non-overlapping tiles pasted side by side, fp32, no blending), with the Predictor
forced to fp32 (to separate the gain of the precision from the cost of the overlap), and
with the untiled network (the reference output and its memory). Each configuration runs
in its own process so that its peak memory (ru_maxrss) is its own.

The 3D U-Net (depth 3, base 16, batch norm, sigmoid) gets batch-norm statistics from real
brightfield crops; the stack is the real 6-plane brightfield series of sephace set 1,
reflected along Z to 64 planes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (brightfield_and_dapi, briefly_train, machine, peak_rss_mb, percentile_normalise, table,
                     update_results)
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.engine.tiling import n_tiles
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.unet import UNet

TILE, OVERLAP = (32, 256, 256), (8, 32, 32)  # the naive loop's tile and the first Predictor tile
BIG_TILE = (40, 320, 320)  # fewer, larger tiles: less overlap to compute twice


def make_stack(shape: tuple[int, int, int]) -> np.ndarray:
    brightfield, _ = brightfield_and_dapi(1)
    z, y, x = shape
    crop = percentile_normalise(brightfield[:, 200:200 + y, 300:300 + x])
    return np.pad(crop, ((0, max(0, z - crop.shape[0])), (0, 0), (0, 0)), mode="reflect")[None, :z].copy()


def make_model() -> UNet:
    return UNet(1, 1, spatial_dims=3, depth=3, base=16, norm="batch", activation="sigmoid")


def make_card(tile=TILE) -> ModelCard:
    return ModelCard(name="bench unet 3d", task="stain", architecture="unet",
                     arch_args={"in_channels": 1, "out_channels": 1, "spatial_dims": 3, "depth": 3, "base": 16},
                     spatial_dims=3, input_channels=["brightfield"], output_channels=["stain"],
                     input_normalisation={"kind": "none"}, output_activation="sigmoid",
                     tile=list(tile), overlap=list(OVERLAP))


class _Declared(torch.nn.Module):
    """The same network, declaring that it accepts any multiple of 2**depth (as the U-Net does)."""

    def __init__(self, net: UNet):
        super().__init__()
        self.net = net
        self.size_multiple = 2 ** net.depth

    def forward(self, x):
        return self.net(x)


def naive(model: torch.nn.Module, stack: np.ndarray) -> np.ndarray:
    """Non-overlapping tiles, fp32, each output pasted where its tile was: what a first try does."""
    out = np.empty_like(stack)
    _, nz, ny, nx = stack.shape
    with torch.inference_mode():
        for z in range(0, nz, TILE[0]):
            for y in range(0, ny, TILE[1]):
                for x in range(0, nx, TILE[2]):
                    sl = (slice(None), slice(z, z + TILE[0]), slice(y, y + TILE[1]), slice(x, x + TILE[2]))
                    tile = torch.from_numpy(np.ascontiguousarray(stack[sl]))[None]
                    out[sl] = model(tile)[0].numpy()
    return out


def worker(config: str, weights: str, shape: tuple[int, int, int], output: str, tile: tuple[int, ...]) -> None:
    """Run one configuration in this process and print one JSON line."""
    stack = make_stack(shape)
    model = make_model()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    rss_before = peak_rss_mb()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    tiles = None
    if config == "untiled":
        with torch.inference_mode():
            result = model(torch.from_numpy(stack)[None])[0].numpy()
        tiles = "1 (whole stack)"
    elif config == "naive":
        result = naive(model, stack)
        tiles = n_tiles(shape, TILE, [0, 0, 0])
    else:
        precision = "fp32" if config.endswith("fp32") else "auto"
        predictor = Predictor(_Declared(model), make_card(tile), device="cpu", precision=precision)
        result = predictor.predict(stack)
        tile, overlap = predictor._tile_for(shape)
        tiles = f"{n_tiles(shape, tile, overlap)} of {'x'.join(map(str, tile))}, batch {predictor.batch_size}, {predictor.precision}"
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    np.save(output, result)
    print(json.dumps({"config": config, "wall": wall, "cpu": cpu, "rss_before": rss_before,
                      "peak_rss": peak_rss_mb(), "tiles": str(tiles)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 x 256 x 256 stack")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--tile", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 gives steadier ratios on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (32, 256, 256) if args.quick else (64, 512, 512)
    if args.worker:
        worker(args.worker, args.weights, shape, args.output, tuple(int(t) for t in args.tile.split(",")))
        return

    started = time.perf_counter()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        stack = make_stack(shape)
        # Batch-norm statistics from real crops (no gradient steps: 3D training is slow here).
        model = briefly_train(make_model(), stack, stack, crop=(16, 64, 64), steps=0)
        weights = str(Path(tmp) / "unet3d.pt")
        torch.save(model.state_dict(), weights)
        results, outputs = {}, {}
        configs = {"untiled": TILE, "naive": TILE, "predictor fp32": TILE, "predictor": TILE,
                   "predictor, big tiles": BIG_TILE}
        for config, tile in configs.items():
            output = str(Path(tmp) / f"{config}.npy")
            cmd = [sys.executable, __file__, "--worker", config, "--weights", weights, "--output", output,
                   "--tile", ",".join(map(str, tile))]
            if args.quick:
                cmd.append("--quick")
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[config] = json.loads(line)
            outputs[config] = np.load(output)
            print(results[config])

    base = results["naive"]
    rows = []
    names = {"untiled": "untiled: the whole stack in one forward pass, fp32",
             "naive": f"naive: non-overlapping {'x'.join(map(str, TILE))} tiles, fp32, pasted",
             "predictor fp32": f"Predictor, card tile {'x'.join(map(str, TILE))}, fp32",
             "predictor": f"Predictor, card tile {'x'.join(map(str, TILE))}, precision auto",
             "predictor, big tiles": f"Predictor, card tile {'x'.join(map(str, BIG_TILE))}, precision auto"}
    for config, r in results.items():
        diff = np.abs(outputs[config] - outputs["untiled"])
        rows.append([names[config], r["tiles"], f"{r['wall']:.1f}", f"{base['wall'] / r['wall']:.2f}x",
                     f"{r['cpu']:.1f}", f"{base['cpu'] / r['cpu']:.2f}x",
                     f"{r['peak_rss']:.0f} ({r['peak_rss'] - r['rss_before']:+.0f})", f"{diff.max():.1e}",
                     f"{diff.mean():.1e}"])
    md = table(["configuration", "tiles", "wall s", "speed-up", "CPU s", "speed-up (CPU s)",
                "peak RSS MB (+ during prediction)", "max |diff| vs untiled", "mean |diff|"], rows)
    print(md)
    elapsed = time.perf_counter() - started
    shape_text = "x".join(map(str, shape))
    body = f"""Machine: {machine()}.
Command: `python bench/bench_3d_stack.py{' --quick' if args.quick else ''}{f' --threads {args.threads}' if args.threads else ''}` ({elapsed:.0f} s in all).
Stack: {shape_text} (Z, Y, X), real brightfield focal series reflected along Z. Model: 3D U-Net
depth 3, base 16, batch norm, sigmoid (batch-norm statistics from real crops). Overlap
{'x'.join(map(str, OVERLAP))} for every Predictor row; the Predictor fits its tiles to the stack. Each row ran
in its own process, once; peak RSS includes the Python process, torch and the stack (the
number in brackets is the growth during prediction). Speed-ups are relative to the naive
loop; differences are against the untiled fp32 output (sigmoid, [0, 1]): the naive loop's
seams show there.
{md}
"""
    update_results("3D stack (bench_3d_stack.py)", body)
    print(f"written to bench/RESULTS.md in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
