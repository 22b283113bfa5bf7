"""One convolution layer at batch size 1: PyTorch's own (oneDNN) vs NNPACK, on this CPU.

    python bench/bench_fast_conv.py

The layers of DeepLIIF's ResNet-9 translators and a few narrower or smaller ones, in fp32, best
of 5 interleaved runs each; the ratio and the largest difference from a float64 reference,
relative to the output's scale. ``engine/fast_conv.py`` sends a layer to NNPACK from these
numbers (``MIN_3X3_CHANNELS``, ``MIN_PIXELS``); rerun this on another CPU to see whether its
rule holds there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _common import interleaved_times, machine, table, update_results

from napari_virtual_stain.engine import fast_conv

# (in channels, out channels, kernel, side of the input map, what it is)
LAYERS = [
    (256, 256, 3, 128, "ResNet-9 trunk, 512 tile"),
    (256, 256, 3, 64, "ResNet-9 trunk, 256 tile"),
    (256, 256, 3, 48, ""),
    (256, 256, 3, 32, ""),
    (256, 256, 3, 16, "ResNet-9 trunk, 64 probe"),
    (128, 128, 3, 128, ""),
    (64, 64, 3, 128, ""),
    (16, 16, 3, 128, ""),
    (64, 3, 7, 512, "ResNet-9 output layer"),
    (3, 64, 7, 512, "ResNet-9 input layer"),
]


def main() -> None:
    if not fast_conv.nnpack_ready():
        print("NNPACK is not available in this PyTorch (or VIRTUAL_STAIN_NNPACK=0): nothing to compare.")
        return
    header = machine()
    rows = []
    with torch.no_grad():
        for cin, cout, k, side, what in LAYERS:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, cin, side, side, generator=g)
            w = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
            b = torch.zeros(cout)
            pad = k // 2
            times = interleaved_times({
                "oneDNN": lambda: F.conv2d(x, w, b, padding=pad),
                "NNPACK": lambda: torch._nnpack_spatial_convolution(x, w, b, [pad, pad]),
            }, rounds=5)
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=pad)
            got = torch._nnpack_spatial_convolution(x, w, b, [pad, pad]).double()
            error = float((got - ref).abs().max() / ref.abs().max())
            chosen = fast_conv._pays(x, tuple(w.shape))
            rows.append([f"{cin} -> {cout}, {k}x{k}, {side} x {side}", what, f"{times['oneDNN'][0] * 1000:.1f}",
                         f"{times['NNPACK'][0] * 1000:.1f}", f"{times['oneDNN'][0] / times['NNPACK'][0]:.2f}x",
                         f"{error:.1e}", "NNPACK" if chosen else "oneDNN"])
    body = (f"Machine: {header}.\nCommand: `python bench/bench_fast_conv.py` (fp32, batch 1, NCHW input, best of 5 "
            "interleaved).\n\n"
            + table(["layer", "where", "oneDNN ms", "NNPACK ms", "oneDNN / NNPACK", "NNPACK's largest error / output scale",
                     "fast_conv chooses"], rows))
    print(body)
    update_results("One convolution: oneDNN vs NNPACK (bench_fast_conv.py)", body, per_cpu=True)


if __name__ == "__main__":
    main()
