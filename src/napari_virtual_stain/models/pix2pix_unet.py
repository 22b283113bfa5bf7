"""The pix2pix U-Net generator (Isola et al., ``UnetGenerator``), 2D: the one in the project.

``num_downs`` stride-2 4x4 convolutions halve the image down to 1x1 (8 for 256 px
inputs: the "U-Net-256" of pix2pix and paper 000; 9 for 512 px: DeepLIIF's "unet_512",
paper 001), then as many transposed convolutions bring it back up, each concatenated with
the encoder features of the same size. Widths double from ``ngf`` up to ``max_mult * ngf``
(8 in pix2pix); the inner ``8 * ngf`` decoder levels use dropout (0.5 in pix2pix, which
uses it as the generator's noise; DeepLIIF's segmenters use none). Unlike pix2pix, any
input size is accepted: the image is padded to a multiple of ``2 ** num_downs`` and the
output cropped back.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .factory import register
from .layers import norm_layer, output_activation


def pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """Pad the spatial axes of ``x`` on their far side up to a multiple of ``multiple`` (and
    at least ``minimum``); reflection where it fits, replication for very small inputs."""
    spatial = x.shape[2:]
    wanted = [max(-(-s // multiple) * multiple, minimum) for s in spatial]
    pads = [w - s for w, s in zip(wanted, spatial)]
    if not any(pads):
        return x
    # F.pad takes (last-left, last-right, second-last-left, ...).
    pad_arg = [p for pad in reversed(pads) for p in (0, pad)]
    mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
    return F.pad(x, pad_arg, mode=mode)


def crop_spatial(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """The top-left ``spatial`` part of ``x`` (undoes ``pad_to_multiple``)."""
    return x[(slice(None), slice(None)) + tuple(slice(0, int(s)) for s in spatial)]


@register("pix2pix_unet")
class Pix2PixUNet(nn.Module):
    """pix2pix's ``UnetGenerator``; see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", dropout: float = 0.5, activation: str = "tanh", max_mult: int = 8):
        super().__init__()
        if num_downs < 2:
            raise ValueError("num_downs must be at least 2")
        self.num_downs = num_downs
        self.size_multiple = 2 ** num_downs  # read by the Predictor to fit tiles
        # pix2pix uses a bias only where no batch norm follows (its use_bias rule).
        bias = norm != "batch"
        widths = [ngf * min(2**i, max_mult) for i in range(num_downs)]
        last = num_downs - 1

        self.downs = nn.ModuleList()
        cin = in_channels
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            # Neither the outermost nor the innermost (1x1) level is normalised, as in pix2pix.
            normalised = 0 < i < last
            layers.append(nn.Conv2d(cin, width, 4, stride=2, padding=1, bias=bias))
            if normalised:
                layers.append(norm_layer(norm, width, 2))
            self.downs.append(nn.Sequential(*layers))
            cin = width

        # ups[0] is the innermost level; every level but the innermost receives [skip, up].
        self.ups = nn.ModuleList()
        for i in reversed(range(num_downs)):
            cin = widths[i] if i == last else 2 * widths[i]
            if i == 0:
                self.ups.append(nn.Sequential(
                    nn.ReLU(True), nn.ConvTranspose2d(cin, out_channels, 4, stride=2, padding=1),
                    output_activation(activation)))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, widths[i - 1], 4, stride=2, padding=1, bias=bias),
                      norm_layer(norm, widths[i - 1], 2)]
            # pix2pix's dropout blocks: the (num_downs - 5) 8*ngf levels just outside the innermost.
            if dropout > 0 and 4 <= i <= last - 1:
                layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        x = pad_to_multiple(x, self.size_multiple)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the innermost features are x itself
        for up in self.ups:
            x = up(x)
            if skips:
                x = torch.cat([skips.pop(), x], dim=1)
        return crop_spatial(x, spatial)
