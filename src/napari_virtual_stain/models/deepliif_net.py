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

import re
from typing import Sequence

import torch
from torch import nn

from .card import RGB_CHANNELS, ModelCard
from .factory import register, register_state_upgrade
from .pix2pix_unet import Pix2PixUNet
from .resnet import ResnetGenerator

MODALITIES = ("Hematoxylin", "DAPI", "Lap2", "Marker")
SEGMENTATION = "Segmentation"
RGB = RGB_CHANNELS[:3]  # the one naming of colour channels (models.card)
DEFAULT_SEG_WEIGHTS = (0.25, 0.15, 0.25, 0.1, 0.25)  # G51 (IHC), G52 (hema), G53 (DAPI), G54 (Lap2), G55 (marker)

# Network sizes. "full" is the paper's; "small" trades capacity for far less work per tile.
CONFIGS: dict[str, dict] = {
    "full": {"trans_ngf": 64, "trans_blocks": 9, "seg_ngf": 64, "seg_downs": 9, "seg_max_mult": 8, "norm": "batch"},
    "small": {"trans_ngf": 8, "trans_blocks": 3, "seg_ngf": 8, "seg_downs": 6, "seg_max_mult": 4, "norm": "batch"},
}


def output_channel_names() -> list[str]:
    """The 15 output channel names, e.g. ``"DAPI R"``, in network output order."""
    return [f"{image} {c}" for image in (*MODALITIES, SEGMENTATION) for c in RGB]


# Checkpoints written before the two pix2pix U-Nets became one (``Pix2PixUNet``) named the
# segmenters' levels ``down``/``up``; they load through this key map (factory.upgrade_state).
_OLD_SEGMENTER_KEY = re.compile(r"^(segmenters\.\d+\.)(down|up)\.")


@register_state_upgrade("deepliif")
def rename_old_segmenter_keys(state: dict) -> dict:
    return {_OLD_SEGMENTER_KEY.sub(lambda m: f"{m.group(1)}{m.group(2)}s.", k): v for k, v in state.items()}


def segmenter(in_channels: int = 3, ngf: int = 64, downs: int = 9, norm: str = "batch",
              max_mult: int = 8) -> Pix2PixUNet:
    """DeepLIIF's segmentation generator: pix2pix's U-Net without dropout ("unet_512" for downs 9)."""
    return Pix2PixUNet(in_channels, 3, num_downs=downs, ngf=ngf, norm=norm, dropout=0.0, activation="tanh",
                       max_mult=max_mult)


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
            segmenter(3 if i else in_channels, ngf=seg_ngf, downs=seg_downs, norm=norm, max_mult=seg_max_mult)
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
                  batch_independent: bool = True, description: str = "", architecture: str = "deepliif", **fields):
    """A model card for a DeepLIIF network (this composite or another architecture with the
    same outputs, e.g. ``deepliif-unet``): RGB 0-255 in, 15 tanh channels out."""
    multiple = 2 ** int(arch_args.get("seg_downs", 9))
    tile = tile or max(512, multiple)
    return ModelCard(
        name=name, task="deepliif", architecture=architecture, arch_args=dict(arch_args), spatial_dims=2,
        input_channels=list(RGB), output_channels=output_channel_names(),
        input_normalisation={"kind": "range", "min": 0, "max": 255, "to": [-1.0, 1.0], "clip": True},
        output_activation="tanh", tile=[tile, tile], overlap=[overlap, overlap],
        batch_independent=batch_independent, description=description,
        extra=({"seg_weights": list(arch_args.get("seg_weights", DEFAULT_SEG_WEIGHTS))} if architecture == "deepliif"
               else {}) | {"modalities": list(MODALITIES)},
        **fields,
    )
