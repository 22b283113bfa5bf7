"""Fine-tune the bundled 2D demo model on images from a visibly different microscope.

    python bench/bench_finetune.py [--minutes 4] [--scratch] [--threads auto]

The bundled ``demo-2d-nuclei-membrane`` was trained on the default synthetic microscope.
Here the data come from ``Microscope.different()``: focused on the other side of the
cells (the brightfield contrast inverts), lower specimen contrast, 2.5x the noise,
stronger uneven illumination and a non-linear camera. Six training fields (seeds
200-205) fine-tune the model for ``--minutes`` with the Trainer (the widget's and CLI's
path); two held-out fields (seeds 2000-2001) are predicted through the Predictor before
and after, and scored per channel (PCC, SSIM, MAE against the real stains scaled to
[0, 1]). ``--scratch`` also trains the same U-Net from random weights for the same time,
to show what the pretrained start is worth. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _common import REPO, machine, table, update_results

sys.path.insert(0, str(REPO / "scripts"))
from train_demo_models import CHANNELS, SETUPS, evaluate, make_pairs, pick_threads  # noqa: E402

from napari_virtual_stain.engine.device import resolve_precision  # noqa: E402
from napari_virtual_stain.io.synthetic import Microscope  # noqa: E402
from napari_virtual_stain.models.registry import load_model  # noqa: E402
from napari_virtual_stain.training.starting import model_for_training  # noqa: E402
from napari_virtual_stain.training.trainer import TrainConfig, Trainer  # noqa: E402

TRAIN_SEEDS = list(range(200, 206))
TEST_SEEDS = [2000, 2001]
SHAPE_TRAIN, SHAPE_TEST = (384, 384), (512, 512)


def fine_tune(model, card, inputs, targets, minutes: float, lr: float) -> tuple:
    precision = resolve_precision(torch.device("cpu"), "auto")
    config = TrainConfig(patch=(128, 128), batch_size=8, steps=100000, max_minutes=minutes, lr=lr,
                         lr_schedule="constant_then_linear", decay_start=0.6, val_every=25, max_val_tiles=24,
                         device="cpu", precision=precision, seed=0)
    trainer = Trainer(model, card, inputs, targets, config)
    start = time.perf_counter()
    result = trainer.run()
    return trainer.model.cpu().eval(), result.card, result, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--scratch", action="store_true", help="also train from random weights for the same time")
    p.add_argument("--threads", default="auto")
    args = p.parse_args()
    threads = pick_threads(args.threads)
    setup = SETUPS["2d"]
    other = Microscope.different()
    header = machine()
    print(header)

    model, card = load_model("demo-2d-nuclei-membrane")
    before = evaluate(model, card, setup, other, TEST_SEEDS, SHAPE_TEST)
    print("before:", {c: round(before["model"][c]["pcc"], 3) for c in CHANNELS})
    inputs, targets = make_pairs(setup, TRAIN_SEEDS, SHAPE_TRAIN, other)

    model, card = model_for_training(from_model="demo-2d-nuclei-membrane", n_in=1, n_out=2, spatial_dims=2,
                                     input_names=["brightfield"], output_names=CHANNELS)
    tuned, tuned_card, result, seconds = fine_tune(model, card, inputs, targets, args.minutes, lr=5e-4)
    after = evaluate(tuned, tuned_card, setup, other, TEST_SEEDS, SHAPE_TEST)
    print(f"after {result.steps} steps ({seconds / 60:.1f} min):", {c: round(after["model"][c]["pcc"], 3) for c in CHANNELS})

    rows = []
    for c in CHANNELS:
        rows.append([c, "bundled model, as is", f"{before['model'][c]['pcc']:.3f}", f"{before['model'][c]['ssim']:.3f}",
                     f"{before['model'][c]['mae']:.3f}", "-"])
        rows.append([c, f"fine-tuned {seconds / 60:.1f} min ({result.steps} steps)", f"{after['model'][c]['pcc']:.3f}",
                     f"{after['model'][c]['ssim']:.3f}", f"{after['model'][c]['mae']:.3f}",
                     f"{after['model'][c]['pcc'] - before['model'][c]['pcc']:+.3f}"])
    if args.scratch:
        torch.manual_seed(0)
        fresh, fresh_card = model_for_training(arch="unet", n_in=1, n_out=2, spatial_dims=2, arch_args=dict(card.arch_args),
                                               input_names=["brightfield"], output_names=CHANNELS)
        fresh, fresh_card, fresh_result, fresh_seconds = fine_tune(fresh, fresh_card, inputs, targets, args.minutes, lr=1e-3)
        scratch = evaluate(fresh, fresh_card, setup, other, TEST_SEEDS, SHAPE_TEST)
        for c in CHANNELS:
            rows.append([c, f"from scratch {fresh_seconds / 60:.1f} min ({fresh_result.steps} steps)",
                         f"{scratch['model'][c]['pcc']:.3f}", f"{scratch['model'][c]['ssim']:.3f}",
                         f"{scratch['model'][c]['mae']:.3f}", f"{scratch['model'][c]['pcc'] - before['model'][c]['pcc']:+.3f}"])
    for c in CHANNELS:
        rows.append([c, "baseline: the normalised input", f"{before['input'][c]['pcc']:.3f}",
                     f"{before['input'][c]['ssim']:.3f}", f"{before['input'][c]['mae']:.3f}", "-"])
    body = (
        f"Machine: {header}; {threads} training thread(s), precision {resolve_precision(torch.device('cpu'), 'auto')}.\n\n"
        f"`python bench/bench_finetune.py --minutes {args.minutes:g}{' --scratch' if args.scratch else ''}`: the bundled "
        "`demo-2d-nuclei-membrane` (trained on the default synthetic microscope) on `Microscope.different()` "
        f"(inverted defocus, lower contrast, 2.5x noise, uneven light, gamma 0.7). Fine-tuned on {len(TRAIN_SEEDS)} fields "
        f"{SHAPE_TRAIN[0]}x{SHAPE_TRAIN[1]} (seeds {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]}), scored through the Predictor on "
        f"{len(TEST_SEEDS)} held-out fields {SHAPE_TEST[0]}x{SHAPE_TEST[1]} (seeds {TEST_SEEDS}); mean over fields.\n\n"
        + table(["channel", "model", "PCC", "SSIM", "MAE", "PCC gain"], rows)
    )
    print(body)
    update_results("Fine-tuning the demo model on another microscope (bench_finetune.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
