"""U-Net in 2D and 3D (Ronneberger et al.), the workhorse of virtual staining.

Configurable depth (number of 2x poolings), base width (doubling per level, capped),
normalisation and output activation. Inputs whose spatial size is not a multiple of
2**depth are padded by reflection inside ``forward`` and cropped back, so the network
accepts any tile shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factory import register
from .layers import check_spatial_dims, conv_cls, conv_transpose_cls, norm_layer, output_activation


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and LeakyReLU."""

    def __init__(self, cin: int, cout: int, spatial_dims: int, norm: str):
        conv = conv_cls(spatial_dims)
        bias = norm in ("none",)
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=bias), norm_layer(norm, cout, spatial_dims), nn.LeakyReLU(0.1, inplace=True),
            conv(cout, cout, 3, padding=1, bias=bias), norm_layer(norm, cout, spatial_dims), nn.LeakyReLU(0.1, inplace=True),
        )


@register("unet")
class UNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2, depth: int = 4,
                 base: int = 32, max_width: int = 512, norm: str = "batch", activation: str = "sigmoid",
                 dropout: float = 0.0):
        super().__init__()
        check_spatial_dims(spatial_dims)
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.spatial_dims = spatial_dims
        self.depth = depth
        # Inputs are padded to this internally; the Predictor fits its tiles to it.
        self.size_multiple = 2 ** depth
        widths = [min(base * 2**i, max_width) for i in range(depth + 1)]
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        up = conv_transpose_cls(spatial_dims)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(ConvBlock(cin, w, spatial_dims, norm))
            cin = w
        self.pool = pool(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], spatial_dims, norm)
        self.dropout = {2: nn.Dropout2d, 3: nn.Dropout3d}[spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(up(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(ConvBlock(2 * widths[i], widths[i], spatial_dims, norm))
        self.head = conv_cls(spatial_dims)(widths[0], out_channels, 1)
        self.activation = output_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        multiple = 2 ** self.depth
        pads = [(-s) % multiple for s in spatial]
        if any(pads):
            # F.pad takes (last-dim-left, last-dim-right, ...); pad only on the far side.
            pad_arg = [p for pair in reversed([(0, p) for p in pads]) for p in pair]
            mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
            x = F.pad(x, pad_arg, mode=mode)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        x = self.activation(self.head(x))
        if any(pads):
            x = x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        return x
