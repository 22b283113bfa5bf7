"""The 3D model on real data: fine-tuned on half of ``fnet-3d``, scored on the other half, against fnet 2017.

    python bench/bench_3d_real.py [--minutes 4] [--threads 1]

Data: ``fnet-3d``, one field of cultured cells, a transmitted-light z-stack and the DNA
(Hoechst) stack of the same field (32 x 128 x 128, both already normalised), and the 2017 fnet
model's own prediction of the DNA stack. The target is the measured DNA stack (noisier than
fnet's prediction, which is a model output, not a measurement).

In one run, for the same minutes of training (``virtual-stain train``'s path, fp32, CPU) on
the LEFT half (x < 64) of the field, all 32 planes:

- "from demo-3d": ``--from demo-3d-nuclei-membrane`` (its nuclei head replaced for one target);
- "from scratch": the same 3D U-Net shape from random weights;

scored through the Predictor on the RIGHT half (x >= 64, never a target in training; the
whole stack is the input, so the right half sees its real neighbours), PCC, SSIM and MAE
against the DNA stack scaled to [0, 1] (1st/99.8th percentiles, clipped), next to the fnet 2017
prediction and the normalised input on the same pixels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from _common import DATA, machine, percentile_normalise, table, update_results

from napari_virtual_stain import metrics  # noqa: E402
from napari_virtual_stain.cli import main as cli  # noqa: E402
from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.models.registry import load_model  # noqa: E402

SECTION = "3D on real data: fnet-3d halves, fine-tuned vs fnet 2017 (bench_3d_real.py)"
DEMO = "demo-3d-nuclei-membrane"
HALF = 64  # x < HALF trains, x >= HALF scores


def scores(pred: np.ndarray, target: np.ndarray) -> list[str]:
    right = (slice(None), slice(None), slice(HALF, None))
    p, t = pred[right], target[right]
    return [f"{metrics.pcc(p, t):.3f}", f"{metrics.ssim(p, t):.3f}", f"{metrics.mae(p, t):.3f}"]


def train(start: list[str], light: Path, dna: Path, out: Path, minutes: float, seed: int) -> float:
    began = time.perf_counter()
    code = cli(["train", str(light), str(dna), *start, "-o", str(out), "--minutes", str(minutes),
                "--precision", "fp32", "--device", "cpu", "--seed", str(seed), "--val-fraction", "0.15"])
    if code != 0:
        raise SystemExit(f"training {' '.join(start)} failed ({code})")
    return time.perf_counter() - began


def predict(model_path: Path, light: np.ndarray) -> np.ndarray:
    model, card = load_model(str(model_path))
    return Predictor(model, card, device="cpu", precision="fp32").predict(light[None])[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = DATA / "fnet-3d"
    light = tifffile.imread(folder / "transmitted_light_ZYX.tif").astype(np.float32)
    dna = tifffile.imread(folder / "dna_ZYX.tif").astype(np.float32)
    fnet = tifffile.imread(folder / "fnet2017_prediction_ZYX.tif").astype(np.float32)
    target = np.clip(percentile_normalise(dna), 0, 1)

    demo_card = load_model(DEMO)[1]
    shape = {k: v for k, v in demo_card.arch_args.items() if k not in ("in_channels", "out_channels", "spatial_dims")}
    rows, times = [], {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tifffile.imwrite(work / "light_left.tif", light[..., :HALF], metadata={"axes": "ZYX"})
        tifffile.imwrite(work / "dna_left.tif", dna[..., :HALF], metadata={"axes": "ZYX"})
        starts = {"from demo-3d": ["--from", DEMO],
                  "from scratch": ["--arch", demo_card.architecture, "--arch-args", json.dumps(shape)]}
        for label, start in starts.items():
            out = work / f"{label.replace(' ', '-')}.pt"
            times[label] = train(start, work / "light_left.tif", work / "dna_left.tif", out, args.minutes, args.seed)
            trained = load_model(str(out))[1].training
            rows.append([label, *scores(np.clip(predict(out, light), 0, 1), target),
                         f"{times[label] / 60:.1f} min, {trained.get('steps')} steps (best at "
                         f"{trained.get('best_step')}), batch 8 of 16x64x64"])
    demo_model, card = load_model(DEMO)
    demo_pred = Predictor(demo_model, card, device="cpu", precision="fp32").predict(light[None])[0]
    rows.append(["demo-3d untuned (nuclei)", *scores(np.clip(demo_pred, 0, 1), target), ""])
    rows.append(["fnet 2017 prediction (its authors' model)", *scores(np.clip(percentile_normalise(fnet), 0, 1), target), ""])
    rows.append(["normalised input (BL)", *scores(np.clip(percentile_normalise(light), 0, 1), target), ""])
    body = (f"Machine: {machine()}.\n"
            f"Command: `python bench/bench_3d_real.py --minutes {args.minutes:g} --threads {args.threads}` "
            f"({time.perf_counter() - started:.0f} s in all). Trained on x < {HALF} of fnet-3d (32 x 128 x 64), "
            f"scored on x >= {HALF} against the measured DNA stack.\n\n"
            + table(["prediction", "PCC", "SSIM", "MAE", "training"], rows))
    print(body)
    update_results(SECTION, body)


if __name__ == "__main__":
    main()
