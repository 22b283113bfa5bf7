"""Train the bundled demo models on synthetic cells and score them on held-out fields.

    python scripts/train_demo_models.py [--which 2d 3d] [--minutes 12] [--arch-2d unet-s4d3b32] [--out-dir DIR]

(a) ``demo-2d-nuclei-membrane``: brightfield (Y, X) -> nuclei + membrane, a 2D U-Net of one of
    the shapes in ``models.unet.SHAPES_2D`` (``--arch-2d``; by default the fast one with a 4x4
    space-to-depth stem, depth 3, base 32, widths capped at 128: ~5 MB; before, depth 4 and
    base 16 at full resolution, ``unet-d4b16``).
(b) ``demo-3d-nuclei-membrane``: brightfield focal series (Z, Y, X) -> nuclei + membrane
    volumes, a 3D U-Net (depth 3, base 16, widths capped at 64: ~4 MB).

Data: ``napari_virtual_stain.io.synthetic`` with the default microscope. Training fields
use seeds 100..; the held-out fields that score the models use seeds 1000.., and the
napari sample data (seed 0) is in neither. The held-out images go through the Predictor
(tiles, blending, the card's normalisation), exactly as a user's image would, and are
compared per channel with two trivial baselines: all zeros, and the normalised input
itself. Targets are scaled to [0, 1] per image and channel with the training targets'
percentiles (``training.datasets.TARGET_NORMALISATION``). The scores go into the card.

On a CPU shared with other jobs one thread is often faster than two (OpenMP threads wait
for each other when a core is taken); ``--threads auto`` times both and picks one.
The 2D model trains with bf16 autocast where the CPU computes bf16 natively (2.3x faster
per step than fp32 here); the 3D model in fp32 (see ``training.trainer.training_precision``:
bf16 3D training gave garbage gradients on this CPU). Evaluation runs in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_virtual_stain.engine.normalise import compute_stats, normalise
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.io.synthetic import Microscope, make_cells_2d, make_cells_3d
from napari_virtual_stain.metrics import channel_scores
from napari_virtual_stain.models.checkpoint import load_checkpoint
from napari_virtual_stain.models.unet import SHAPES_2D
from napari_virtual_stain.training.datasets import TARGET_NORMALISATION
from napari_virtual_stain.training.starting import model_for_training
from napari_virtual_stain.training.trainer import TrainConfig, Trainer, training_precision

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "napari_virtual_stain" / "models" / "bundled"
CHANNELS = ["nuclei", "membrane"]

SETUPS = {
    "2d": dict(
        name="demo-2d-nuclei-membrane", dims=2, make=make_cells_2d,
        train_seeds=list(range(100, 112)), train_shape=(384, 384),
        test_seeds=[1000, 1001, 1002], test_shape=(512, 512),
        arch="unet-s4d3b32",  # a name in SHAPES_2D (--arch-2d)
        # Inference tiling: an overlap of 64 kept seams below 0.01 for the depth-4 U-Net
        # (0.06 at 32, measured on a 1024x1024 synthetic field); big tiles keep CPU and GPU busy.
        patch=(128, 128), batch_size=8, lr=1e-3, tile=[1024, 1024], overlap=[64, 64],
    ),
    "3d": dict(
        name="demo-3d-nuclei-membrane", dims=3, make=make_cells_3d,
        train_seeds=list(range(100, 106)), train_shape=(32, 192, 192),
        test_seeds=[1000, 1001], test_shape=(32, 256, 256),
        arch_args={"depth": 3, "base": 16, "max_width": 64, "norm": "batch", "activation": "sigmoid"},
        # Bigger inference tiles: 1.5x faster than 32x128x128 on a 48x256x256 stack, same seams.
        patch=(16, 64, 64), batch_size=4, lr=1e-3, tile=[40, 320, 320], overlap=[8, 32, 32],
    ),
}


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def make_pairs(setup: dict, seeds: list[int], shape, microscope: Microscope | None = None
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(brightfield, nuclei + membrane) pairs of synthetic fields, channels first."""
    inputs, targets = [], []
    for seed in seeds:
        cells = setup["make"](shape, seed=seed, microscope=microscope or Microscope())
        inputs.append(cells["brightfield"][None].astype(np.float32))
        targets.append(np.stack([cells[c] for c in CHANNELS]).astype(np.float32))
    return inputs, targets


def pick_threads(requested: str) -> int:
    """One or two threads, whichever trains a small U-Net faster right now."""
    if requested != "auto":
        torch.set_num_threads(int(requested))
        return int(requested)
    from napari_virtual_stain.models.unet import UNet

    timings = {}
    for threads in (1, min(2, torch.get_num_threads() or 1)):
        torch.set_num_threads(threads)
        net = UNet(1, 2, depth=3, base=16)
        opt = torch.optim.Adam(net.parameters())
        x = torch.rand(4, 1, 96, 96)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            loss = net(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            best = min(best, time.perf_counter() - start)
        timings[threads] = best
    chosen = min(timings, key=timings.get)
    log(f"threads: {', '.join(f'{k}: {v:.2f} s/step' for k, v in timings.items())} -> {chosen}")
    torch.set_num_threads(chosen)
    return chosen


def evaluate(model, card, setup: dict, microscope: Microscope | None = None, seeds=None, shape=None) -> dict:
    """Scores on held-out fields: the model (through the Predictor) vs zeros vs the input.

    Returns ``{"model" | "zeros" | "input": {channel: {pcc, ssim, mae}}}``, each the mean
    over the fields.
    """
    inputs, targets = make_pairs(setup, seeds or setup["test_seeds"], shape or setup["test_shape"], microscope)
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    per_field = {"model": [], "zeros": [], "input": []}
    for x, y in zip(inputs, targets):
        y_unit = np.stack([normalise(c[None], TARGET_NORMALISATION, compute_stats(c[None], TARGET_NORMALISATION))[0]
                           for c in y])
        pred = predictor.predict(x)
        x_unit = np.clip(normalise(x, card.input_normalisation, compute_stats(x, card.input_normalisation)), 0, 1)
        candidates = {"model": pred, "zeros": np.zeros_like(y_unit), "input": np.repeat(x_unit, len(CHANNELS), axis=0)}
        for label, values in candidates.items():
            per_field[label].append(channel_scores(values, y_unit, names=CHANNELS, metrics=("pcc", "ssim", "mae")))
    summary = {}
    for label, fields in per_field.items():
        summary[label] = {c: {m: _mean([f[c][m] for f in fields]) for m in ("pcc", "ssim", "mae")} for c in CHANNELS}
    return summary


def _mean(values: list[float]) -> float | None:
    """Mean of the finite values; None (JSON null) when there is none, e.g. the PCC of all zeros."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def train(which: str, minutes: float, out_dir: Path, threads: int, arch_2d: str | None = None) -> dict:
    setup = SETUPS[which]
    if "arch" in setup:
        arch = arch_2d or setup["arch"]
        setup = {**setup, "arch_args": SHAPES_2D[arch][1], "architecture": f"{arch}: {SHAPES_2D[arch][0]}"}
    dims = setup["dims"]
    torch.manual_seed(0)
    model, card = model_for_training(arch="unet", n_in=1, n_out=2, spatial_dims=dims, input_names=["brightfield"],
                                     output_names=CHANNELS, arch_args=setup["arch_args"], name=setup["name"])
    card.tile, card.overlap = list(setup["tile"]), list(setup["overlap"])
    card.pixel_size_um = Microscope().pixel_size_um
    t0 = time.perf_counter()
    inputs, targets = make_pairs(setup, setup["train_seeds"], setup["train_shape"])
    log(f"{which}: {len(inputs)} training fields {setup['train_shape']} made in {time.perf_counter() - t0:.1f} s")
    precision = training_precision(torch.device("cpu"), "auto", dims)
    config = TrainConfig(patch=setup["patch"], batch_size=setup["batch_size"], steps=100000, max_minutes=minutes,
                         lr=setup["lr"], loss="l1", lr_schedule="constant_then_linear", decay_start=0.6,
                         val_every=50, max_val_tiles=24, val_fraction=0.15, seed=0, device="cpu",
                         precision=precision)
    trainer = Trainer(model, card, inputs, targets, config)

    def report(u):
        if u.step % 25 == 0 or u.step == 1:
            val = f"val {u.val_loss:.4f} (step {u.val_step})" if u.val_loss is not None else ""
            log(f"{which} step {u.step}  train {u.train_loss:.4f}  {val}  {u.sec_per_step:.2f} s/step  "
                f"{(u.eta_s or 0) / 60:.1f} min left  lr {u.lr:.2e}")

    result = trainer.run(on_update=report)
    log(f"{which}: {result.reason} after {result.steps} steps, {result.seconds / 60:.1f} min, best step {result.best_step}")

    trained = trainer.trained_card()
    eval_start = time.perf_counter()
    scores = evaluate(trainer.model.cpu().eval(), trained, setup)
    log(f"{which}: held-out evaluation in {time.perf_counter() - eval_start:.0f} s")
    trained.scores = {
        "held_out": {"data": f"make_cells_{dims}d seeds {setup['test_seeds']}, shape {list(setup['test_shape'])}, "
                             "default Microscope(); targets scaled per field to [0, 1] (1st/99.8th percentiles)",
                     "model": scores["model"], "baseline_zeros": scores["zeros"], "baseline_input": scores["input"]},
        "validation": trained.scores.get("validation", {}),
    }
    trained.description = (f"DEMO model trained only on synthetic cells (napari_virtual_stain.io.synthetic."
                           f"make_cells_{dims}d, default microscope). It shows how the plugin works; it is not "
                           "meant for real microscope images - fine-tune it on your own pairs first.")
    trained.training = {
        "architecture": setup.get("architecture", f"{dims}D U-Net {setup['arch_args']}"),
        "data": f"synthetic make_cells_{dims}d, seeds {setup['train_seeds'][0]}-{setup['train_seeds'][-1]}, "
                f"shape {list(setup['train_shape'])}, default Microscope()",
        "steps": result.steps, "best_step": result.best_step, "minutes": round(result.seconds / 60, 1),
        "threads": threads, "precision": precision, "torch": str(torch.__version__),
        "script": "scripts/train_demo_models.py",
        "config": config.to_dict(), "history": trained.training.get("history", {}),
    }
    trained.training["config"].pop("best_path", None)
    out = out_dir / f"{setup['name']}.pt"
    from napari_virtual_stain.models.checkpoint import save_checkpoint
    save_checkpoint(out, trainer.model.cpu(), trained)
    load_checkpoint(out)  # proves it loads
    log(f"{which}: wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return {"name": setup["name"], "steps": result.steps, "minutes": round(result.seconds / 60, 1), **scores}


def print_table(summaries: list[dict]) -> None:
    print(f"\n{'model':<26}{'channel':<10}{'':<8}{'PCC':>8}{'SSIM':>8}{'MAE':>8}")
    for s in summaries:
        for c in CHANNELS:
            for label in ("model", "zeros", "input"):
                v = {k: float("nan") if x is None else x for k, x in s[label][c].items()}
                print(f"{s['name']:<26}{c:<10}{label:<8}{v['pcc']:>8.3f}{v['ssim']:>8.3f}{v['mae']:>8.3f}")


def write_results(out_dir: Path) -> str:
    """The held-out scores of the bundled demo models (read from their cards) as a section of bench/RESULTS.md."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from _common import machine, table, update_results

    rows = []
    for setup in SETUPS.values():
        path = out_dir / f"{setup['name']}.pt"
        if not path.is_file():
            continue
        _, card = load_checkpoint(path)
        held = card.scores.get("held_out", {})
        t = card.training
        for c in CHANNELS:
            for label, key in (("model", "model"), ("zeros", "baseline_zeros"), ("normalised input", "baseline_input")):
                v = held.get(key, {}).get(c, {})
                cells = ["-" if v.get(m) is None else f"{v[m]:.3f}" for m in ("pcc", "ssim", "mae")]
                rows.append([card.name, c, label] + cells
                            + [f"{t.get('steps')} steps, {t.get('minutes')} min, {t.get('precision')}" if label == "model" else ""])
    body = (f"Machine: {machine()}.\n\n`python scripts/train_demo_models.py`: U-Nets trained on synthetic cells "
            "(default microscope, training seeds 100+), scored through the Predictor on held-out fields (seeds 1000+) "
            "against the real (noisy) stains scaled to [0, 1]; mean over fields. Baselines: all zeros, and the "
            "normalised brightfield itself.\n\n"
            + table(["model", "channel", "prediction", "PCC", "SSIM", "MAE", "training"], rows))
    update_results("Bundled demo models (train_demo_models.py)", body)
    return body


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--which", nargs="+", default=["2d", "3d"], choices=sorted(SETUPS))
    p.add_argument("--minutes", type=float, default=12.0, help="training time of the 2D model")
    p.add_argument("--minutes-3d", type=float, default=15.0, help="training time of the 3D model (fp32: slower steps)")
    p.add_argument("--arch-2d", choices=sorted(SHAPES_2D), default=SETUPS["2d"]["arch"],
                   help="the 2D model's U-Net shape (models.unet.SHAPES_2D)")
    p.add_argument("--out-dir", type=Path, default=BUNDLED)
    p.add_argument("--threads", default="auto", help="'auto', 1 or 2")
    p.add_argument("--report-only", action="store_true", help="only write bench/RESULTS.md from the existing cards")
    args = p.parse_args(argv)
    if args.report_only:
        print(write_results(args.out_dir))
        return 0
    threads = pick_threads(args.threads)
    summaries = [train(which, args.minutes_3d if which == "3d" else args.minutes, args.out_dir, threads, args.arch_2d)
                 for which in args.which]
    print_table(summaries)
    print(json.dumps(summaries, indent=1))
    print(write_results(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
