"""The GPU path, measured: current-view latency and a DeepLIIF tile batch, with and without the copy stream.

    python bench/bench_gpu.py [--rounds N]

On a machine with a CUDA GPU it prints the device and times, each the best of ``--rounds``
after one warm-up run:

- the current view (1024 x 1024 in the middle of a 2048 x 2688 image: a real brightfield plane
  tiled 2 x 2 when ../shared/data is there, else random values of the same size) with the
  bundled 2D model, as the dock runs it (model loaded, the layer's statistics known);
- the full-size DeepLIIF networks (the paper's, random weights: timing only) on a 2048 x 2048
  RGB image (25 tiles of 512 with 64 px overlap);

each with the copy stream and pinned memory (``streams=True``, the default) and with the plain
synchronous path (``streams=False``), and the largest difference between the two outputs.
It also prints the batch size the memory probe chose. Nothing is written to bench/RESULTS.md.

Without a CUDA GPU it says so in one sentence and exits 0.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import DATA, brightfield_and_dapi, machine, table

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.models.registry import load_model
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain

MODEL = "demo-2d-nuclei-membrane"


def best_of(fn, rounds: int) -> tuple[float, object]:
    """Best wall time of ``rounds`` runs after a warm-up (the first CUDA run pays for cuDNN's
    algorithm search and the memory probe), and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()  # returns host arrays: the device work is finished when it returns
        best = min(best, time.perf_counter() - t0)
    return best, result


def brightfield_image() -> tuple[np.ndarray, str]:
    try:
        plane = brightfield_and_dapi(1)[0][2]
        return np.tile(plane, (2, 2)), "real brightfield (sephace set 1) tiled 2x2"
    except OSError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (2048, 2688), dtype=np.uint8), f"random values ({DATA} not found)"


def current_view(rounds: int) -> list[list[str]]:
    image, what = brightfield_image()
    view = Region((512, 832), (1536, 1856))
    rows, outputs = [], {}
    for streams in (True, False):
        model, card = load_model(MODEL)
        predictor = Predictor(model, card, device="cuda", streams=streams)
        stats = run_stain(predictor, image, region=view).stats  # as the dock: statistics known, probe done
        seconds, result = best_of(lambda: run_stain(predictor, image, region=view, stats=stats), rounds)
        outputs[streams] = result.data
        rows.append([f"current view 1024x1024, {MODEL} ({what})", "on" if streams else "off", predictor.precision,
                     str(predictor.batch_size), f"{seconds:.3f}"])
    diff = float(np.abs(outputs[True] - outputs[False]).max())
    rows[-1].append(f"{diff:.2e}")
    rows[0].append("")
    return rows


def deepliif_batch(rounds: int) -> list[list[str]]:
    args = deepliif_arch_args("full")
    card = deepliif_card("full-size (random)", args)
    image = np.random.default_rng(0).integers(0, 256, (3, 2048, 2048), dtype=np.uint8)
    rows, outputs = [], {}
    for streams in (True, False):
        torch.manual_seed(0)
        predictor = Predictor(DeepLIIFNet(**args).eval(), card, device="cuda", streams=streams)
        seconds, out = best_of(lambda: predictor.predict(image), rounds)
        outputs[streams] = out
        rows.append(["DeepLIIF full-size, 2048x2048 RGB (25 tiles of 512)", "on" if streams else "off",
                     predictor.precision, str(predictor.batch_size), f"{seconds:.3f}"])
    rows[0].append("")
    rows[-1].append(f"{float(np.abs(outputs[True] - outputs[False]).max()):.2e}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case, after one warm-up")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU is present on this machine, so there is nothing to measure.")
        return
    print(f"Device: {torch.cuda.get_device_name(0)}\nMachine: {machine()}\n")
    rows = current_view(args.rounds) + deepliif_batch(args.rounds)
    print(table(["what", "copy stream", "precision", "batch", "best wall s", "max |on - off|"], rows))


if __name__ == "__main__":
    main()
