"""Test-time augmentation on held-out real data: accuracy with and without, and its cost.

    python bench/bench_tta.py [--minutes 3] [--plane 3] [--threads 1]

Data: ``sephace-brightfield-dapi`` (real brightfield focal series and DAPI of the same
field). The bundled ``demo-2d-nuclei-membrane`` is fine-tuned for ``--minutes`` (Trainer,
the path of ``virtual-stain train --from``) on the LEFT half of field 1 (one brightfield
plane -> DAPI). It is then scored through the Predictor, with and without TTA, on two
regions it never saw: the RIGHT half of field 1 and the whole of field 2. The untuned
bundled model (its nuclei channel) is scored the same way, and the normalised input as a
baseline. PCC, SSIM and MAE against DAPI scaled to [0, 1] (1st/99.8th percentiles of the
scored region, clipped). Times are CPU seconds of this process (the machine is shared:
CPU time is steadier than wall time there), best of the runs made.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from _common import brightfield_and_dapi, machine, percentile_normalise, table, update_results

from napari_virtual_stain import metrics  # noqa: E402
from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.models.registry import load_model  # noqa: E402
from napari_virtual_stain.training.config import TrainConfig  # noqa: E402
from napari_virtual_stain.training.starting import model_for_training  # noqa: E402
from napari_virtual_stain.training.trainer import Trainer  # noqa: E402

BLUR_SIGMA = 1.0
SECTION = "Test-time augmentation on real brightfield -> DAPI (bench_tta.py)"


def held_out_regions(plane: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (brightfield plane (1, Y, X) float32, DAPI (Y, X) float32) of regions never trained on."""
    bf1, dapi1 = brightfield_and_dapi(1)
    bf2, dapi2 = brightfield_and_dapi(2)
    half = bf1.shape[-1] // 2
    return {"field 1, right half": (bf1[None, plane, :, half:].astype(np.float32), dapi1[:, half:].astype(np.float32)),
            "field 2, whole": (bf2[None, plane].astype(np.float32), dapi2.astype(np.float32))}


def training_pair(plane: int) -> tuple[np.ndarray, np.ndarray]:
    bf, dapi = brightfield_and_dapi(1)
    half = bf.shape[-1] // 2
    return bf[None, plane, :, :half].astype(np.float32), dapi[None, :, :half].astype(np.float32)


def fine_tuned(minutes: float, plane: int):
    x, y = training_pair(plane)
    model, card = model_for_training(from_model="demo-2d-nuclei-membrane", n_in=1, n_out=1, spatial_dims=2,
                                     input_names=["brightfield"], output_names=["nuclei"], name="demo-tuned-dapi")
    config = TrainConfig(patch=(128, 128), batch_size=8, steps=100000, max_minutes=minutes, lr=5e-4,
                         lr_schedule="constant_then_linear", decay_start=0.6, val_every=50, max_val_tiles=16,
                         device="cpu", precision="fp32", seed=0)
    trainer = Trainer(model, card, [x], [y], config)
    result = trainer.run()
    return trainer.model.cpu().eval(), result.card, result.steps


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    t = np.clip(percentile_normalise(target), 0, 1)
    return {"pcc": metrics.pcc(pred, t), "ssim": metrics.ssim(pred, t), "mae": metrics.mae(pred, t)}


def timed_predict(predictor: Predictor, image: np.ndarray, tta: bool, channel: int, rounds: int):
    best_cpu, best_wall, out = float("inf"), float("inf"), None
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        out = predictor.predict(image, tta=tta)
        best_cpu, best_wall = min(best_cpu, time.process_time() - cpu), min(best_wall, time.perf_counter() - wall)
    return out[channel], best_cpu, best_wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--plane", type=int, default=3, help="brightfield plane (0-5) used as the input")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="timed predictions per setting (best is kept)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header = machine()
    print(header)
    regions = held_out_regions(args.plane)
    start = time.perf_counter()
    tuned, tuned_card, steps = fine_tuned(args.minutes, args.plane)
    print(f"fine-tuned {steps} steps in {(time.perf_counter() - start) / 60:.1f} min")
    demo, demo_card = load_model("demo-2d-nuclei-membrane")
    models = {f"fine-tuned {args.minutes:g} min ({steps} steps)": (tuned, tuned_card),
              "bundled demo, untuned (nuclei)": (demo, demo_card)}

    rows, costs = [], []
    for region, (image, target) in regions.items():
        base = score(np.clip(percentile_normalise(image[0]), 0, 1), target)
        rows.append([region, "baseline: the normalised input", "-", f"{base['pcc']:.3f}", f"{base['ssim']:.3f}",
                     f"{base['mae']:.3f}"])
        for label, (model, card) in models.items():
            predictor = Predictor(model, card, device="cpu", precision="fp32")
            plain, cpu_plain, wall_plain = timed_predict(predictor, image, False, 0, args.rounds)
            augmented, cpu_tta, wall_tta = timed_predict(predictor, image, True, 0, args.rounds)
            s0, s1 = score(plain, target), score(augmented, target)
            # A control: is TTA more than a blur? The plain prediction smoothed a little.
            blurred = score(ndimage.gaussian_filter(plain, BLUR_SIGMA), target)
            for name, s in (("no", s0), (f"no, blurred (sigma {BLUR_SIGMA:g} px)", blurred), ("yes", s1)):
                rows.append([region, label, name, f"{s['pcc']:.3f}", f"{s['ssim']:.3f}", f"{s['mae']:.3f}"])
            rows.append([region, label, "gain", f"{s1['pcc'] - s0['pcc']:+.3f}", f"{s1['ssim'] - s0['ssim']:+.3f}",
                         f"{s1['mae'] - s0['mae']:+.3f}"])
            costs.append([region, label, "x".join(map(str, image.shape[1:])), f"{cpu_plain:.1f}", f"{cpu_tta:.1f}",
                          f"{cpu_tta / cpu_plain:.2f}", f"{wall_tta / wall_plain:.2f}"])
            print(rows[-4:], costs[-1], flush=True)

    body = (
        f"Machine: {header}; {args.threads} thread(s), fp32, CPU. Shared machine: times are indicative, the ratio is "
        "what to read.\n\n"
        f"`python bench/bench_tta.py --minutes {args.minutes:g} --plane {args.plane} --rounds {args.rounds}`: "
        "`demo-2d-nuclei-membrane` "
        f"fine-tuned on the left half of sephace field 1 (brightfield plane {args.plane} -> DAPI, patch 128, batch 8, "
        "lr 5e-4), scored on the right half of field 1 and on all of field 2 (never trained on). TTA = the 8 flips "
        "and quarter turns of each tile, averaged before blending (tile 1024, overlap 64). The blurred rows are a "
        "control: the plain prediction smoothed, to tell TTA's gain from mere smoothing.\n\n"
        + table(["held-out region", "model", "TTA", "PCC", "SSIM", "MAE"], rows)
        + "\n\nCost (CPU seconds of one prediction; ratio TTA / plain):\n\n"
        + table(["region", "model", "pixels", "CPU s plain", "CPU s TTA", "CPU ratio", "wall ratio"], costs)
    )
    print(body)
    update_results(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
