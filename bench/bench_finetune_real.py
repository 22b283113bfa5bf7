"""A user's first fine-tuning run on a real field: which start, and which defaults, in 4 minutes.

    python bench/bench_finetune_real.py [--cpu-minutes 4] [--sweep] [--threads 1]

The data: ``sephace-brightfield-dapi`` set2 (a 40x brightfield focal series of 6 planes
and its DAPI image), a field the bundled ``label-free-nuclei-2d`` never saw. Every run
trains on the LEFT half (each of the 6 planes paired with the DAPI image, as a user would
give the stack and its stain) and is scored on the RIGHT half, plane by plane through the
Predictor, against the DAPI image scaled to [0, 1] (mean PCC / SSIM / MAE over planes).

Every run goes through the Fine-tune dock's own path (``workflows.finetune``:
``FineTuneSettings`` -> ``prepare`` -> ``run``; its patch, batch, validation split,
augmentation and best-weights rule) and is stopped after the same budget of CPU
seconds of this process (one torch thread by default): on a shared machine wall minutes
depend on the neighbours, CPU seconds hardly do, and with one thread on a quiet machine
they are the wall minutes a user waits. Compared in one run:

- from ``label-free-nuclei-2d`` (the dock's defaults: Adam, lr ``training.defaults.FINE_TUNE_LR``,
  constant, patch 128, batch 8);
- from ``demo-2d-nuclei-membrane`` (synthetic only; its nuclei head), the same defaults;
- from scratch, the same U-Net shape at lr 1e-3 (its better rate: random weights learn
  slowly at 2e-4, so the comparison is not tilted against it).

``--sweep`` adds runs from ``label-free-nuclei-2d`` with other learning rates (2e-4 is the
Trainer's default for a fresh network, and was the fine-tuning default before): the
measurements behind the dock's default. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tifffile
import torch

from _common import DATA, REPO, machine, table, update_results

sys.path.insert(0, str(REPO / "scripts"))
from train_real_stain_models import METRICS, input_baseline, score_planes  # noqa: E402

from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.models.registry import model_card  # noqa: E402
from napari_virtual_stain.training.callbacks import Callback  # noqa: E402
from napari_virtual_stain.training.layer_pairs import TrainingImage  # noqa: E402
from napari_virtual_stain.workflows.finetune import FineTuneSettings, prepare, run  # noqa: E402

NEW, DEMO = "label-free-nuclei-2d", "demo-2d-nuclei-membrane"


class CpuBudget(Callback):
    """Ends a run once this process has spent ``seconds`` of CPU time since it started."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.process_time()

    def on_step(self, trainer, info) -> None:
        if time.process_time() - self.start >= self.seconds:
            trainer.request_stop("minutes")


def field_halves():
    folder = DATA / "sephace-brightfield-dapi"
    bf = tifffile.imread(folder / "set2_brightfield_ZYX.tif").astype(np.float32)
    dapi = tifffile.imread(folder / "set2_dapi_YX.tif").astype(np.float32)
    half = bf.shape[-1] // 2
    train = (bf[..., :half], np.broadcast_to(dapi[:, :half], bf[..., :half].shape).copy())
    held_out = [(plane[None, :, half:], dapi[:, half:]) for plane in bf]
    return train, held_out


def score(model, card, planes) -> dict:
    predictor = Predictor(model.cpu().eval(), card, device="cpu", precision="fp32")
    return score_planes(planes, lambda x: predictor.predict(x)[0])


def fine_tune(label: str, settings: FineTuneSettings, train, planes, cpu_seconds: float) -> dict:
    stack, stain = train
    trainer = prepare(settings, TrainingImage(stack, "brightfield"), [TrainingImage(stain, "nuclei")])
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(trainer) if cpu_seconds <= 0 else trainer.run(callbacks=[CpuBudget(cpu_seconds)])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores = score(trainer.model, trainer.trained_card(), planes)
    row = {**scores, "steps": result.steps, "best_step": result.best_step, "cpu_min": cpu / 60,
           "wall_min": wall / 60, "lr": trainer.base_lr, "patch": settings.patch[0]}
    print(f"{time.strftime('%H:%M:%S')} {label}: {result.steps} steps (best {result.best_step}), "
          f"{cpu / 60:.1f} CPU min, {wall / 60:.1f} wall min -> PCC {row['pcc']:.3f} SSIM {row['ssim']:.3f}",
          flush=True)
    return row


def runs(sweep: bool) -> dict[str, FineTuneSettings]:
    out = {
        f"from {NEW} (dock defaults)": FineTuneSettings(arch=None, from_model=NEW, device="cpu"),
        f"from {DEMO} (dock defaults)": FineTuneSettings(arch=None, from_model=DEMO, device="cpu"),
        "from scratch, same U-Net, lr 1e-3": FineTuneSettings(
            arch="unet", arch_args={k: v for k, v in model_card(NEW).arch_args.items()
                                    if k not in ("in_channels", "out_channels", "spatial_dims")},
            spatial_dims=2, lr=1e-3, device="cpu"),
    }
    if sweep:
        for lr in (5e-5, 2e-4):
            out[f"from {NEW}, lr {lr:g}"] = FineTuneSettings(arch=None, from_model=NEW, lr=lr, device="cpu")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-minutes", type=float, default=4.0, help="CPU minutes of training per run")
    p.add_argument("--sweep", action="store_true", help="also other learning rates and patch sizes")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header = machine()
    print(header, flush=True)
    started = time.perf_counter()
    train, planes = field_halves()

    rows = []
    for label, settings in runs(args.sweep).items():
        # A time-bounded run, as in the dock with its minutes set; the CPU budget ends it first.
        settings.seed, settings.minutes = 0, args.cpu_minutes * 20
        r = fine_tune(label, settings, train, planes, args.cpu_minutes * 60)
        rows.append([label, *(f"{r[m]:.3f}" for m in METRICS), f"{r['steps']} (best {r['best_step']})",
                     f"{r['cpu_min']:.1f} / {r['wall_min']:.1f}", f"{r['lr']:g}", str(r["patch"])])
    for name in (NEW, DEMO):
        from napari_virtual_stain.models.registry import load_model

        model, card = load_model(name)
        untuned = score(model, card, planes)
        rows.append([f"{name}, untuned", *(f"{untuned[m]:.3f}" for m in METRICS), "-", "-", "-", "-"])
    baseline = score_planes(planes, input_baseline(model_card(NEW)))
    rows.append(["normalised input (BL-Mean)", *(f"{baseline[m]:.3f}" for m in METRICS), "-", "-", "-", "-"])

    command = f"python bench/bench_finetune_real.py --cpu-minutes {args.cpu_minutes:g}" + (" --sweep" if args.sweep else "")
    body = (
        f"Machine: {header}; {args.threads} training thread(s), fp32.\n"
        f"Command: `{command}` ({(time.perf_counter() - started) / 60:.0f} min in all).\n\n"
        "Sephace set2 (never seen by any bundled model): trained on the left half (6 brightfield planes, each "
        "paired with the DAPI image), scored on the right half, mean over its 6 planes, through the Predictor. "
        "Every run is the Fine-tune dock's own path (`workflows.finetune`: patch, batch 8, 15% validation band, "
        "flips and turns, best validation weights kept), stopped after the same CPU time of this process "
        "(steps differ: a bigger patch costs more per step).\n\n"
        + table(["start / setting", "PCC", "SSIM", "MAE", "steps", "CPU / wall min", "lr", "patch"], rows)
    )
    print(body)
    update_results("Fine-tuning on a real field: start and defaults (bench_finetune_real.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
