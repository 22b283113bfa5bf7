"""The DeepLIIF composite network (paper 001): IHC -> four mpIF modalities + fused segmentation.

Four translation generators (ResNet-n-blocks) turn the IHC image into hematoxylin, DAPI,
Lap2 and marker (Ki67) images. Five segmentation generators (pix2pix U-Nets) each see one
image -- the IHC itself (G51) and the four *inferred* modalities (G52..G55) -- and their
outputs are fused with fixed weights (0.25, 0.15, 0.25, 0.1, 0.25 by default).

Every output is a 3-channel RGB rendering in [-1, 1] (tanh), exactly like the DeepLIIF
training panels, so our networks and the official released ones give the same layout:
``(N, 15, H, W)`` = hematoxylin RGB, DAPI RGB, Lap2 RGB, marker RGB, segmentation RGB.
The segmentation colours mean red = positive cell, blue = negative cell, green = boundary.

Two sizes: ``full`` (the paper's: ResNet-9blocks ngf 64, U-Net-512 ngf 64) and ``small``
(ResNet-3blocks ngf 8, U-Net-64 ngf 8: a fast CPU configuration, used by the bundled model).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .factory import register
from .layers import norm_layer
from .resnet import ResnetGenerator

MODALITIES = ("Hematoxylin", "DAPI", "Lap2", "Marker")
SEGMENTATION = "Segmentation"
RGB = ("R", "G", "B")
DEFAULT_SEG_WEIGHTS = (0.25, 0.15, 0.25, 0.1, 0.25)  # G51 (IHC), G52 (hema), G53 (DAPI), G54 (Lap2), G55 (marker)

# Network sizes. "full" is the paper's; "small" trades capacity for far less work per tile.
CONFIGS: dict[str, dict] = {
    "full": {"trans_ngf": 64, "trans_blocks": 9, "seg_ngf": 64, "seg_downs": 9, "seg_max_mult": 8, "norm": "batch"},
    "small": {"trans_ngf": 8, "trans_blocks": 3, "seg_ngf": 8, "seg_downs": 6, "seg_max_mult": 4, "norm": "batch"},
}


def output_channel_names() -> list[str]:
    """The 15 output channel names, e.g. ``"DAPI R"``, in network output order."""
    return [f"{image} {c}" for image in (*MODALITIES, SEGMENTATION) for c in RGB]


class UnetGenerator(nn.Module):
    """The pix2pix U-Net (Isola et al.): 4x4 stride-2 convolutions, ``downs`` levels.

    ``downs`` = 9 with 512 x 512 input is DeepLIIF's "unet_512"; input sizes must be a
    multiple of ``2**downs``. Widths double from ``ngf`` up to ``max_mult * ngf`` (8 in pix2pix).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, downs: int = 9,
                 norm: str = "batch", max_mult: int = 8):
        super().__init__()
        if downs < 2:
            raise ValueError("a U-Net generator needs at least 2 downsamplings")
        widths = [ngf * min(2 ** i, max_mult) for i in range(downs)]
        bias = norm != "batch"
        self.down = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(cin, w, 4, stride=2, padding=1, bias=bias))
            if 0 < i < downs - 1:  # no norm on the outermost and innermost (1x1 at 512) levels
                layers.append(norm_layer(norm, w, 2))
            self.down.append(nn.Sequential(*layers))
            cin = w
        self.up = nn.ModuleList()
        for i in reversed(range(downs)):
            cin = widths[i] if i == downs - 1 else 2 * widths[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()))
            else:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, widths[i - 1], 4, 2, 1, bias=bias),
                                             norm_layer(norm, widths[i - 1], 2)))
        self.size_multiple = 2 ** downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the innermost output is x itself
        for block in self.up:
            x = block(x)
            if skips:
                x = torch.cat([skips.pop(), x], dim=1)
        return x


def fuse(segmentations: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum of the five segmentation outputs (paper 001, eq. for the fused mask)."""
    total = segmentations[0] * float(weights[0])
    for seg, w in zip(segmentations[1:], weights[1:]):
        total = total + seg * float(w)
    return total


@register("deepliif")
class DeepLIIFNet(nn.Module):
    """IHC (N, 3, H, W) in [-1, 1] -> (N, 15, H, W): four modalities and the fused segmentation."""

    def __init__(self, in_channels: int = 3, trans_ngf: int = 64, trans_blocks: int = 9, seg_ngf: int = 64,
                 seg_downs: int = 9, norm: str = "batch", seg_weights: Sequence[float] = DEFAULT_SEG_WEIGHTS,
                 seg_max_mult: int = 8):
        super().__init__()
        if len(seg_weights) != len(MODALITIES) + 1:
            raise ValueError(f"seg_weights needs {len(MODALITIES) + 1} values, not {len(seg_weights)}")
        self.translators = nn.ModuleList(
            ResnetGenerator(in_channels, 3, ngf=trans_ngf, n_blocks=trans_blocks, norm=norm, activation="tanh")
            for _ in MODALITIES)
        self.segmenters = nn.ModuleList(
            UnetGenerator(3 if i else in_channels, 3, ngf=seg_ngf, downs=seg_downs, norm=norm, max_mult=seg_max_mult)
            for i in range(len(MODALITIES) + 1))
        self.seg_weights = [float(w) for w in seg_weights]
        self.size_multiple = 2 ** seg_downs  # read by the Predictor to pad small images

    def forward_parts(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The four modalities and the five unfused segmentations (for training losses)."""
        modalities = [g(x) for g in self.translators]
        segs = [self.segmenters[0](x)] + [g(m) for g, m in zip(self.segmenters[1:], modalities)]
        return modalities, segs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modalities, segs = self.forward_parts(x)
        return torch.cat(modalities + [fuse(segs, self.seg_weights)], dim=1)


def deepliif_arch_args(config: str = "small", **overrides) -> dict:
    """The ``arch_args`` of a named size (``"full"`` or ``"small"``), with overrides."""
    if config not in CONFIGS:
        raise ValueError(f"unknown DeepLIIF configuration {config!r} (known: {', '.join(CONFIGS)})")
    args = dict(CONFIGS[config], in_channels=3, seg_weights=list(DEFAULT_SEG_WEIGHTS))
    args.update(overrides)
    return args


def deepliif_card(name: str, arch_args: dict, *, tile: int | None = None, overlap: int = 64,
                  batch_independent: bool = True, description: str = "", **fields):
    """A model card for a DeepLIIF composite: RGB 0-255 in, 15 tanh channels out."""
    from .card import ModelCard  # local: the card module does not need torch models

    multiple = 2 ** int(arch_args.get("seg_downs", 9))
    tile = tile or max(512, multiple)
    return ModelCard(
        name=name, task="deepliif", architecture="deepliif", arch_args=dict(arch_args), spatial_dims=2,
        input_channels=list(RGB), output_channels=output_channel_names(),
        input_normalisation={"kind": "range", "min": 0, "max": 255, "to": [-1.0, 1.0], "clip": True},
        output_activation="tanh", tile=[tile, tile], overlap=[overlap, overlap],
        batch_independent=batch_independent, description=description,
        extra={"seg_weights": list(arch_args.get("seg_weights", DEFAULT_SEG_WEIGHTS)),
               "modalities": list(MODALITIES)},
        **fields,
    )
