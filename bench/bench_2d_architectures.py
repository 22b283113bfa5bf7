"""2D U-Net shapes for speed: one 1024x1024 forward of each, timed interleaved against today's.

Today's shape is the bundled 2D models' (depth 4, base 16, widths <= 128, every level's
convolutions at its own resolution, the first at full resolution). The candidates use the
speed options of ``models.unet.UNet``: batch norm folded into the convolutions at inference
(``fold_bn``), a space-to-depth stem (``stem``: the U-Net runs at 1/2 or 1/4 resolution on
the pixels turned into channels, ``pixel_shuffle`` puts them back), additive skips
(``skip="add"``), fewer levels or narrower widths. Random weights (the time does not depend
on them), fp32, channels_last, ``torch.inference_mode``, as the Predictor runs them on a CPU
without native bf16. GMAC: multiply-accumulates of the convolutions per forward.

    python bench/bench_2d_architectures.py [--rounds 3] [--threads 1 2] [--size 1024]

Every candidate is timed in the same rounds as today's shape (``interleaved_times``), so
the ratios hold on a shared machine even when the seconds do not.
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved_times, machine, table, update_results

from napari_virtual_stain.models.unet import UNet

TODAY = {"depth": 4, "base": 16, "max_width": 128}
CANDIDATES = {
    "today (bundled 2D models)": {},
    "today + fold_bn": {"fold_bn": True},
    "stem 2, depth 4, base 16": {"stem": 2, "fold_bn": True},
    "stem 2, depth 4, base 16, add skips (unet-s2d4b16-add)": {"stem": 2, "skip": "add", "fold_bn": True},
    "stem 2, depth 3, base 16": {"stem": 2, "depth": 3, "fold_bn": True},
    "stem 4, depth 3, base 32 (unet-s4d3b32)": {"stem": 4, "depth": 3, "base": 32, "fold_bn": True},
    "stem 4, depth 3, base 32, add skips": {"stem": 4, "depth": 3, "base": 32, "skip": "add", "fold_bn": True},
}


def gmac(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Convolution multiply-accumulates of one forward (counted on an unfolded copy of the shape)."""
    total = []

    def count(module, inputs, output):
        # Every weight meets every output pixel (Conv) or every input pixel (ConvTranspose) once.
        pixels = output if isinstance(module, torch.nn.Conv2d) else inputs[0]
        total.append(module.weight.numel() * pixels[:, 0].numel())

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return sum(total) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=1024, help="side of the square input (default 1024)")
    args = parser.parse_args()
    if args.size < 64 or args.rounds < 1 or min(args.threads) < 1:
        parser.error("--size must be at least 64, --rounds and --threads at least 1")
    x = torch.rand(1, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    models, rows_info = {}, {}
    for name, options in CANDIDATES.items():
        torch.manual_seed(0)
        arch = {**TODAY, **options}
        unfolded = UNet(1, 1, **{**arch, "fold_bn": False}).eval()
        model = UNet(1, 1, **arch).eval().to(memory_format=torch.channels_last)
        models[name] = model
        rows_info[name] = (sum(p.numel() for p in model.parameters()) / 1e6, gmac(unfolded, x.contiguous()))

    def forward(model):
        with torch.inference_mode():
            model(x)

    best = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        best[threads] = interleaved_times({n: (lambda m=m: forward(m)) for n, m in models.items()},
                                          rounds=args.rounds)
    today = next(iter(CANDIDATES))
    rows = []
    for name in CANDIDATES:
        params, macs = rows_info[name]
        row = [name, f"{params:.2f}", f"{macs:.1f}"]
        for threads in args.threads:
            (wall, cpu), (wall0, cpu0) = best[threads][name], best[threads][today]
            row += [f"{wall:.3f}", f"{wall / wall0:.2f} (CPU {cpu / cpu0:.2f})"]
        rows.append(row)
    header = ["shape", "M params", "GMAC"]
    for threads in args.threads:
        header += [f"wall s, {threads} thr", f"x today, {threads} thr"]
    body = (f"Machine: {machine()}\n\n`python bench/bench_2d_architectures.py --rounds {args.rounds} --threads "
            f"{' '.join(map(str, args.threads))} --size {args.size}`: one {args.size}x{args.size} forward (1 -> 1 "
            f"channel, fp32, channels_last), best of {args.rounds} interleaved rounds after a warm-up; every shape "
            "depth 4 / base 16 / widths <= 128 unless named otherwise.\n\n" + table(header, rows))
    print(body)
    update_results("2D U-Net shapes for speed (bench_2d_architectures.py)", body)


if __name__ == "__main__":
    main()
