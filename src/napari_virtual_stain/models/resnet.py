"""The pix2pix / CycleGAN ResNet-n-blocks generator (Johnson et al.), 2D.

Two stride-2 downsamplings, ``n_blocks`` residual blocks at 1/4 resolution, two
upsamplings. DeepLIIF's four translation generators are ResNet-9blocks with ngf 64.
Reflection padding as in the original; inputs are padded to a multiple of 4 and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factory import register
from .layers import norm_layer, output_activation


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm: str, dropout: float = 0.0):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=norm == "none"), norm_layer(norm, dim, 2), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=norm == "none"), norm_layer(norm, dim, 2)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


@register("resnet_generator")
class ResnetGenerator(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", activation: str = "tanh", dropout: float = 0.0):
        super().__init__()
        self.size_multiple = 4  # two stride-2 convolutions; the Predictor fits tiles to it
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), norm_layer(norm, ngf, 2), nn.ReLU(True),
        ]
        width = ngf
        for _ in range(2):
            layers += [nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=bias),
                       norm_layer(norm, width * 2, 2), nn.ReLU(True)]
            width *= 2
        layers += [ResnetBlock(width, norm, dropout) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm_layer(norm, width // 2, 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), output_activation(activation)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        return self.model(x)[..., :h, :w]
