"""2.5D (a focal series in) against a single brightfield plane, for the same training steps.

    python bench/bench_25d.py [--steps 150 | --cpu-minutes 4] [--plane 3] [--shape unet-s4d3b32] [--threads 1]

Data: ``sephace-brightfield-dapi``, a 6-plane brightfield focal series and the DAPI image
of the same field. Two networks of the same shape (``--shape``, one of
``models.unet.SHAPES_2D``; random weights, seed 0) are trained for the same number of steps
(Trainer, the path of ``virtual-stain train``) on the LEFT half of field 1; with
``--cpu-minutes`` each gets the steps that fit that much CPU time (from a 20-step pilot),
so the 2.5D network's wider first layer is paid for out of the same time:

- "single plane": ``--arch unet`` on brightfield plane ``--plane``;
- "2.5D": ``--arch unet-2.5d`` on all 6 planes, centred on the same plane.

Both are scored through the Predictor on the RIGHT half of field 1 and all of field 2
(never trained on): PCC, SSIM and MAE against DAPI scaled to [0, 1] (1st/99.8th
percentiles, clipped), next to the normalised input plane as a baseline.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from _common import brightfield_and_dapi, machine, percentile_normalise, table, update_results

from napari_virtual_stain import metrics  # noqa: E402
from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.models.unet import SHAPES_2D  # noqa: E402
from napari_virtual_stain.tasks.region import Region  # noqa: E402
from napari_virtual_stain.tasks.stain import run_stain  # noqa: E402
from napari_virtual_stain.training.config import TrainConfig  # noqa: E402
from napari_virtual_stain.training.layer_pairs import window_for_pair  # noqa: E402
from napari_virtual_stain.training.starting import model_for_training  # noqa: E402
from napari_virtual_stain.training.trainer import Trainer  # noqa: E402

SECTION = "2.5D focal series vs a single plane, real brightfield -> DAPI (bench_25d.py)"
PILOT_STEPS = 20


def fields():
    bf1, dapi1 = brightfield_and_dapi(1)
    bf2, dapi2 = brightfield_and_dapi(2)
    half = bf1.shape[-1] // 2
    train = (bf1[:, :, :half].astype(np.float32), dapi1[:, :half].astype(np.float32))
    held_out = {"field 1, right half": (bf1[:, :, half:].astype(np.float32), dapi1[:, half:].astype(np.float32)),
                "field 2, whole": (bf2.astype(np.float32), dapi2.astype(np.float32))}
    return train, held_out


def trainer_for(arch: str, x: np.ndarray, y: np.ndarray, steps: int, arch_args: dict) -> Trainer:
    torch.manual_seed(0)
    model, card = model_for_training(arch=arch, n_in=1, n_out=1, spatial_dims=2, input_names=["brightfield"],
                                     output_names=["DAPI"], arch_args=arch_args, name=arch)
    config = TrainConfig(patch=(128, 128), batch_size=8, steps=steps, lr=1e-3, lr_schedule="constant_then_linear",
                         decay_start=0.6, val_every=max(25, steps // 12), max_val_tiles=16, device="cpu",
                         precision="fp32", seed=0)
    return Trainer(model, card, [x], [y[None]], config)


def steps_for(arch: str, x, y, arch_args: dict, cpu_minutes: float) -> int:
    """The steps that fit ``cpu_minutes`` of CPU, from a short pilot of the same network."""
    pilot = trainer_for(arch, x, y, PILOT_STEPS, arch_args)
    start = time.process_time()
    pilot.run()
    return max(PILOT_STEPS, int(cpu_minutes * 60 / ((time.process_time() - start) / PILOT_STEPS)))


def train(arch: str, x: np.ndarray, y: np.ndarray, steps: int, arch_args: dict):
    trainer = trainer_for(arch, x, y, steps, arch_args)
    start = time.process_time()
    result = trainer.run()
    return trainer.model.cpu().eval(), result.card, time.process_time() - start, result.steps


def linear_mix(train_stack: np.ndarray, train_target: np.ndarray):
    """A baseline that also sees every plane: least squares over the normalised planes (+ 1), fitted on the training half."""
    def design(stack):
        planes = [percentile_normalise(p).ravel() for p in stack]
        return np.stack(planes + [np.ones_like(planes[0])], axis=1)
    t = np.clip(percentile_normalise(train_target), 0, 1).ravel()
    coef, *_ = np.linalg.lstsq(design(train_stack), t, rcond=None)
    return lambda stack: (design(stack) @ coef).reshape(stack.shape[1:]).astype(np.float32)


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    t = np.clip(percentile_normalise(target), 0, 1)
    return {"pcc": metrics.pcc(pred, t), "ssim": metrics.ssim(pred, t), "mae": metrics.mae(pred, t)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--cpu-minutes", type=float, default=None, help="train each for this much CPU time instead")
    p.add_argument("--shape", choices=sorted(SHAPES_2D), default="unet-s4d3b32")
    p.add_argument("--plane", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header = machine()
    print(header)
    (bf, dapi), held_out = fields()
    window, planes = window_for_pair((1,) + bf.shape, target_is_stack=False, target_plane=args.plane)
    runs = {
        f"single plane {args.plane}": ("unet", bf[None, args.plane], {}),
        f"2.5D, planes {planes.start}-{planes.stop - 1} (centre {args.plane})":
            ("unet-2.5d", bf[None, planes], {"planes": window.planes, "centre": window.centre}),
    }
    shape = SHAPES_2D[args.shape][1]
    mix = linear_mix(bf, dapi)
    trained = {}
    for label, (arch, x, extra) in runs.items():
        steps = args.steps if args.cpu_minutes is None else steps_for(arch, x, dapi, {**shape, **extra}, args.cpu_minutes)
        trained[label] = train(arch, x, dapi, steps, {**shape, **extra})
        print(f"{label}: {steps} steps in {trained[label][2] / 60:.1f} CPU min", flush=True)

    rows = []
    for region, (stack, target) in held_out.items():
        base = score(np.clip(percentile_normalise(stack[args.plane]), 0, 1), target)
        rows.append([region, f"baseline: normalised plane {args.plane}", "-", f"{base['pcc']:.3f}",
                     f"{base['ssim']:.3f}", f"{base['mae']:.3f}"])
        lin = score(np.clip(mix(stack), 0, 1), target)
        rows.append([region, "baseline: least-squares mix of the 6 planes", "-", f"{lin['pcc']:.3f}",
                     f"{lin['ssim']:.3f}", f"{lin['mae']:.3f}"])
        for label, (model, card, cpu, steps) in trained.items():
            predictor = Predictor(model, card, device="cpu", precision="fp32")
            if card.architecture == "unet-2.5d":
                z = args.plane
                pred = run_stain(predictor, stack[planes], region=Region((z - planes.start, 0, 0),
                                                                         (z - planes.start + 1,) + stack.shape[1:])).data[0, 0]
            else:
                pred = predictor.predict(stack[None, args.plane])[0]
            s = score(pred, target)
            rows.append([region, label, f"{steps} / {cpu / 60:.1f}", f"{s['pcc']:.3f}", f"{s['ssim']:.3f}",
                         f"{s['mae']:.3f}"])
            print(rows[-1], flush=True)

    length = f"--steps {args.steps}" if args.cpu_minutes is None else f"--cpu-minutes {args.cpu_minutes:g}"
    trained_for = (f"{args.steps} steps" if args.cpu_minutes is None
                   else f"for {args.cpu_minutes:g} CPU minutes (steps from a {PILOT_STEPS}-step pilot)")
    body = (
        f"Machine: {header}; {args.threads} thread(s), fp32, CPU (shared machine: CPU minutes are indicative).\n\n"
        f"`python bench/bench_25d.py {length} --plane {args.plane} --shape {args.shape}`: two U-Nets of the same shape "
        f"({SHAPES_2D[args.shape][0]}; random start, seed 0) trained {trained_for} each (patch 128, batch 8, lr 1e-3, "
        "constant then linear decay) on the left half of sephace field 1, brightfield -> DAPI; scored on the right "
        "half of field 1 and all of field 2 "
        "(never trained on). The least-squares baseline mixes the 6 normalised planes linearly (fitted on the "
        "training half): what a focal series gives without a network.\n\n"
        + table(["held-out region", "input", "training steps / CPU min", "PCC", "SSIM", "MAE"], rows)
    )
    print(body)
    update_results(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
