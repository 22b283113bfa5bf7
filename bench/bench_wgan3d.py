"""A short 3D WGAN-GP run (paper 002) on partially labelled synthetic stacks: is it stable?

    python bench/bench_wgan3d.py [--steps 40] [--threads auto]

As in paper 002, the generator is a U-Net first trained with L1 (here: the bundled
``demo-3d-nuclei-membrane``), then trained as a conditional WGAN-GP: a PatchGAN critic
with instance norm, n_critic 5, lambda_gp 10, adversarial weight 0.05, RMSprop at 5e-5
for both networks. The targets are partially labelled: the membrane stain is missing for
one of the three stacks and a block of nuclei voxels is NaN in another, so the masked
loss and the masked critic input are exercised. Reports whether every loss stayed
finite, the critic's Wasserstein estimate and gradient penalty over the run (the
critic/generator balance), the validation loss before and after and the time per
generator step. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from _common import REPO, machine, table, update_results

sys.path.insert(0, str(REPO / "scripts"))
from train_demo_models import CHANNELS, SETUPS, make_pairs, pick_threads  # noqa: E402

from napari_virtual_stain.training.starting import model_for_training  # noqa: E402
from napari_virtual_stain.training.trainer import TrainConfig, Trainer  # noqa: E402

SEEDS = [300, 301, 302]
SHAPE = (24, 128, 128)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="generator steps (each after n_critic critic steps)")
    p.add_argument("--threads", default="auto")
    args = p.parse_args()
    threads = pick_threads(args.threads)
    header = machine()
    print(header)

    inputs, targets = make_pairs(SETUPS["3d"], SEEDS, SHAPE)
    partial = [list(targets[0]), [targets[1][0], None], list(targets[2])]  # no membrane stain for stack 2
    partial[2][0] = partial[2][0].copy()
    partial[2][0][:, :40, :40] = np.nan  # and a block of missing nuclei voxels in stack 3

    model, card = model_for_training(from_model="demo-3d-nuclei-membrane", n_in=1, n_out=2, spatial_dims=3,
                                     input_names=["brightfield"], output_names=CHANNELS)
    config = TrainConfig(patch=(16, 64, 64), batch_size=2, steps=args.steps, gan="wgan-gp", n_critic=5,
                         lambda_gp=10.0, gan_weight=0.05, lr=5e-5, critic_width=16, val_every=max(1, args.steps // 4),
                         max_val_tiles=12, val_fraction=0.2, device="cpu", precision="fp32", seed=0)
    trainer = Trainer(model, card, inputs, partial, config)
    updates = []
    start = time.perf_counter()

    def log(u):
        updates.append(u)
        if u.step % 5 == 0 or u.step == 1:
            print(f"step {u.step}: recon {u.train_loss:.4f}  critic {u.critic_loss:+.3f}  W {u.wasserstein:+.3f}  "
                  f"gp {u.gradient_penalty:.3f}  adv {u.gen_adv_loss:+.3f}  {u.sec_per_step:.1f} s/step", flush=True)

    result = trainer.run(on_update=log)
    seconds = time.perf_counter() - start
    fields = ("train_loss", "critic_loss", "wasserstein", "gradient_penalty", "gen_adv_loss")
    finite = all(math.isfinite(getattr(u, f)) for u in updates for f in fields)
    val = result.history["val"]
    quarters = np.array_split(np.arange(len(updates)), 4)
    rows = []
    for i, q in enumerate(quarters):
        if len(q) == 0:
            continue
        pick = [updates[j] for j in q]
        rows.append([f"{pick[0].step}-{pick[-1].step}"] + [f"{np.mean([getattr(u, f) for u in pick]):+.4f}" for f in fields])
    body = (
        f"Machine: {header}; {threads} thread(s), fp32.\n\n"
        f"`python bench/bench_wgan3d.py --steps {args.steps}`: `demo-3d-nuclei-membrane` as the generator, PatchGAN "
        f"critic (instance norm, ndf 16), n_critic 5, lambda_gp 10, adversarial weight 0.05, RMSprop 5e-5; three "
        f"synthetic stacks {'x'.join(map(str, SHAPE))} (seeds {SEEDS}), membrane missing for one, a NaN block in another; "
        f"patches 16x64x64, batch 2.\n\n"
        f"All losses finite: **{'yes' if finite else 'NO'}**. {result.steps} generator steps "
        f"({result.steps * 5} critic steps) in {seconds / 60:.1f} min, {seconds / max(1, result.steps):.1f} s per "
        f"generator step. Validation loss (masked L1): {val[0][1]:.4f} at step 0 -> "
        f"{min(v for _, v in val):.4f} best -> {val[-1][1]:.4f} at step {val[-1][0]}.\n\n"
        "Means per quarter of the run (W = the critic's Wasserstein estimate D(real) - D(fake); "
        "critic = -W + lambda_gp * gp):\n\n"
        + table(["steps", "recon (L1)", "critic loss", "W", "gradient penalty", "generator adv"], rows)
    )
    print(body)
    update_results("3D WGAN-GP stability (bench_wgan3d.py)", body)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
