"""Tiled vs untiled inference, and precision / memory layout, for the bundled-size 2D U-Net.

    python bench/bench_tiling.py            # 2048 x 2048 image (about 3 minutes)
    python bench/bench_tiling.py --quick    # 1024 x 1024
    python bench/bench_tiling.py --rounds 3 # more timed rounds on a noisy machine

Everything is measured in the same run on the same pixels, so the ratios are fair even on
a shared machine:

1. precision and memory layout on one 512 x 512 tile of a real brightfield image: seconds
   and the largest difference from fp32 on the [0, 1] output;
2. efficiency = untiled seconds / tiled seconds for the whole image through the Predictor
   at several tile sizes, with fixed (card) tiles and with tiles fitted to the image, and
   the seam error (tiled vs untiled output) at several overlaps.

The U-Net (depth 4, base 32, batch norm, sigmoid) is briefly trained on real
brightfield -> DAPI crops so that its activations have realistic ranges.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import (brightfield_and_dapi, briefly_train, interleaved_times, machine, percentile_normalise, table,
                     update_results)
from napari_virtual_stain.engine.device import autocast_context, cpu_has_native_bf16
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.unet import UNet


def make_card(tile: int, overlap: int) -> ModelCard:
    return ModelCard(name="bench unet", task="stain", architecture="unet",
                     arch_args={"in_channels": 1, "out_channels": 1, "depth": 4, "base": 32},
                     spatial_dims=2, input_channels=["brightfield"], output_channels=["DAPI"],
                     input_normalisation={"kind": "none"}, output_activation="sigmoid",
                     tile=[tile, tile], overlap=[overlap, overlap])


def forward(model: torch.nn.Module, x: torch.Tensor, precision: str, layout: torch.memory_format) -> np.ndarray:
    with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
        return model(x.contiguous(memory_format=layout)).float().numpy()


def precision_table(model, tile_image: np.ndarray, rounds: int) -> str:
    x = torch.from_numpy(tile_image)[None, None]
    configs = {"fp32": ("fp32", torch.contiguous_format),
               "fp32 + channels_last": ("fp32", torch.channels_last),
               "bf16 autocast": ("bf16", torch.contiguous_format),
               "bf16 autocast + channels_last": ("bf16", torch.channels_last)}

    def run(precision, layout):
        model.to(memory_format=layout)  # cheap for a model this size; included in every config alike
        return forward(model, x, precision, layout)

    outputs = {name: run(*cfg) for name, cfg in configs.items()}
    times = interleaved_times({name: (lambda cfg=cfg: run(*cfg)) for name, cfg in configs.items()}, rounds, warmup=False)
    model.to(memory_format=torch.contiguous_format)
    rows = []
    for name in configs:
        err = np.abs(outputs[name] - outputs["fp32"])
        wall, cpu = times[name]
        rows.append([name, f"{wall:.3f}", f"{times['fp32'][0] / wall:.2f}x", f"{cpu:.2f}", f"{times['fp32'][1] / cpu:.2f}x",
                     f"{err.max():.1e}", f"{err.mean():.1e}", f"{err.max() * 255:.2f}"])
    return table(["512x512 tile", "wall s", "speed-up", "CPU s", "speed-up (CPU s)", "max |diff| vs fp32",
                  "mean |diff|", "max diff in 8-bit grey levels"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024 image")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 2048, quick 1024)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds after the first (output) run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 gives steadier ratios on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (1024 if args.quick else 2048)
    rounds = args.rounds
    started = time.perf_counter()
    print(machine())

    brightfield, dapi = brightfield_and_dapi(1)
    source = percentile_normalise(brightfield[2])[None]
    target = percentile_normalise(dapi)[None].clip(0, 1)
    model = briefly_train(UNet(1, 1, spatial_dims=2, depth=4, base=32, norm="batch", activation="sigmoid"),
                          source, target, crop=(96, 96), steps=4)
    print(f"trained briefly in {time.perf_counter() - started:.0f} s")

    # 1. precision and layout on one real 512 x 512 tile
    prec_md = precision_table(model, np.ascontiguousarray(source[0, 256:768, 400:912]), rounds + 1)
    print(prec_md)

    # 2. tiled vs untiled on the same pixels, in the precision "auto" picks here
    image = np.pad(source[0], ((0, max(0, size - source.shape[1])), (0, max(0, size - source.shape[2]))),
                   mode="reflect")[None, :size, :size].copy()
    auto = Predictor(model, make_card(512, 32), device="cpu")  # also puts the model in its layout
    precision, layout = auto.precision, auto.memory_format
    x = torch.from_numpy(image)[None]
    runs = {"untiled": lambda: forward(model, x, precision, layout)}
    outputs = {"untiled": runs["untiled"]()[0]}
    configs = {}
    # batch None = the Predictor's default for the CPU (about a megapixel per forward pass).
    for tile, overlap, how, batch in [(512, 32, "fixed", None), (512, 32, "fitted", None), (512, 64, "fitted", None),
                                      (1024, 32, "fitted", None), (1024, 64, "fitted", None), (512, 0, "fitted", None)]:
        # A model that declares size_multiple gets tiles fitted to the image; the U-Net accepts
        # any multiple of 2**depth. Without it the Predictor uses the card's tile as is.
        wrapper = _Declared(model, 2 ** model.depth if how == "fitted" else 0)
        predictor = Predictor(wrapper, make_card(tile, overlap), device="cpu", batch_size=batch)
        name = f"{tile}/{overlap} {how}, batch {predictor.batch_size}"
        configs[name] = predictor
        runs[name] = lambda p=predictor: p.predict(image)
        outputs[name] = runs[name]()
        print(name, "done")
    times = interleaved_times(runs, rounds, warmup=False)
    wall_u, cpu_u = times["untiled"]
    rows = [["untiled", "1 pass", f"{size}x{size}", f"{wall_u:.2f}", "1.00", f"{cpu_u:.1f}", "1.00", "0", "0", "0"]]
    for name, predictor in configs.items():
        tile, _ = predictor._tile_for(image.shape[1:])
        diff = np.abs(outputs[name] - outputs["untiled"])
        wall, cpu = times[name]
        rows.append([name, str(_count(image.shape[1:], predictor)), f"{tile[0]}x{tile[1]}", f"{wall:.2f}",
                     f"{wall_u / wall:.2f}", f"{cpu:.1f}", f"{cpu_u / cpu:.2f}", f"{diff.max():.1e}",
                     f"{np.percentile(diff, 99.9):.1e}", f"{diff.mean():.1e}"])
    tiling_md = table(["tile/overlap", "tiles", "tile fed", "wall s", "efficiency (untiled/tiled)", "CPU s",
                       "efficiency (CPU s)", "max |tiled - untiled|", "99.9th percentile", "mean"], rows)
    print(tiling_md)
    elapsed = time.perf_counter() - started
    body = f"""Machine: {machine()}.
Command: `python bench/bench_tiling.py{' --quick' if args.quick else ''}{f' --threads {args.threads}' if args.threads else ''}` ({elapsed:.0f} s in all).
Model: 2D U-Net depth 4, base 32, batch norm, sigmoid, briefly trained on real brightfield -> DAPI
(sephace set 1) and its batch-norm statistics re-estimated on real crops, so activations have
realistic ranges. CPU has native bf16: {cpu_has_native_bf16()}. Times are the best of {rounds + 1} (precision) or
{rounds} (tiling) timed round(s) that alternate the configurations, after one untimed run of each; CPU s = CPU time of the process (all threads).

### Precision and memory layout (one real 512x512 brightfield tile)
{prec_md}

### Tiled vs untiled, {size}x{size} image (real brightfield, reflected to size), precision "{precision}", {'channels_last' if layout is torch.channels_last else 'contiguous'}
Untiled: the whole image in one forward pass. "fitted" = tiles shrunk to the image
(engine.tiling.fit_tile) for a model that declares `size_multiple`; "fixed" = the card's tile as is.
Differences compare the blended tiled output with the untiled output (sigmoid output in [0, 1]).
{tiling_md}
"""
    update_results("Tiling and precision (bench_tiling.py)", body)
    print(f"written to bench/RESULTS.md in {elapsed:.0f} s")


class _Declared(torch.nn.Module):
    """The same network, declaring which input sizes it accepts (0: only the card's tile)."""

    def __init__(self, net: torch.nn.Module, size_multiple: int):
        super().__init__()
        self.net = net
        self.size_multiple = size_multiple

    def forward(self, x):
        return self.net(x)


def _count(spatial, predictor) -> int:
    from napari_virtual_stain.engine.tiling import n_tiles
    tile, overlap = predictor._tile_for(spatial)
    return n_tiles(spatial, tile, overlap)


if __name__ == "__main__":
    main()
