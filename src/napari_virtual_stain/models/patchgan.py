"""PatchGAN critic in 2D and 3D (pix2pix's NLayerDiscriminator).

Classifies overlapping patches as real or fake; with ``norm="none"`` and no final
activation it doubles as the WGAN-GP critic of paper 002 (batch norm would break the
per-sample gradient penalty, so use "instance" or "none" there).
"""

from __future__ import annotations

import torch
from torch import nn

from .factory import register
from .layers import check_spatial_dims, conv_cls, norm_layer


@register("patchgan")
class PatchGAN(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, spatial_dims: int = 2,
                 norm: str = "batch"):
        super().__init__()
        check_spatial_dims(spatial_dims)
        conv = conv_cls(spatial_dims)
        bias = norm == "none"
        layers: list[nn.Module] = [conv(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [conv(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       norm_layer(norm, ndf * mult, spatial_dims), nn.LeakyReLU(0.2, True)]
        layers.append(conv(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
