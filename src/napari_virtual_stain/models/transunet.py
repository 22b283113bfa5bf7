"""TransUNet (Chen et al. 2021): a CNN encoder, a ViT encoder on its 1/16 grid, a U-Net decoder. 2D.

Paper 000 used it for tissue photographs -> IMC protein maps; it did best on collagen,
whose large connected shapes suit the transformer's global attention.

Layout (as TransUNet's R50-ViT hybrid, smaller):
- CNN encoder: a 7x7 stride-2 root (skip at 1/2), max-pool and a residual block (skip at
  1/4), residual blocks with stride 2 to 1/8 (skip) and 1/16. Widths ``base * (1, 2, 4, 8)``.
- Transformer: each 1/16 pixel is a token (patch size 1 on the CNN grid, as TransUNet),
  projected to ``hidden``, plus a learned position embedding, then ``layers`` pre-norm
  encoder blocks with ``heads`` attention heads.
- Decoder: a 3x3 convolution, then four (upsample 2x, concat skip, two 3x3 convolutions)
  blocks, the last one at full size without a skip, and a 3x3 output convolution.

The position embedding is learned on a ``img_size / 16`` grid and interpolated
(bicubic) to the grid of any other input, so tiles of any size work; inputs are padded
to a multiple of 16 and the output cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factory import register
from .layers import norm_layer, output_activation
from .pix2pix_unet import crop_spatial, pad_to_multiple

PATCH_GRID_STRIDE = 16  # the CNN encoder's total downsampling


def _conv_norm_relu(cin: int, cout: int, norm: str, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none"), norm_layer(norm, cout, 2),
            nn.ReLU(True)]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (projected when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_norm_relu(cin, cout, norm, stride),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"), norm_layer(norm, cout, 2))
        self.shortcut = (nn.Identity() if cin == cout and stride == 1 else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=norm == "none"),
                                       norm_layer(norm, cout, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class DecoderBlock(nn.Module):
    """Upsample 2x (bilinear), concatenate the skip if any, two 3x3 convolutions."""

    def __init__(self, cin: int, skip: int, cout: int, norm: str):
        super().__init__()
        self.convs = nn.Sequential(*_conv_norm_relu(cin + skip, cout, norm), *_conv_norm_relu(cout, cout, norm))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


@register("transunet")
class TransUNet(nn.Module):
    """CNN + transformer encoder, cascaded upsampling decoder; see the module docstring.

    Batch norm by default (as the U-Net): at prediction time it uses running statistics, so
    neighbouring tiles are normalised alike and blend without seams.
    """

    def __init__(self, in_channels: int, out_channels: int, base: int = 16, hidden: int = 192, layers: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, img_size: int = 256, dropout: float = 0.0,
                 norm: str = "batch", activation: str = "sigmoid"):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        if layers < 1:
            raise ValueError("TransUNet needs at least one transformer layer")
        if img_size < PATCH_GRID_STRIDE:
            raise ValueError(f"img_size must be at least {PATCH_GRID_STRIDE}")
        self.size_multiple = PATCH_GRID_STRIDE  # read by the Predictor to fit tiles
        w = [base, 2 * base, 4 * base, 8 * base]
        self.root = nn.Sequential(nn.Conv2d(in_channels, w[0], 7, stride=2, padding=3, bias=norm == "none"),
                                  norm_layer(norm, w[0], 2), nn.ReLU(True))  # 1/2
        self.stage1 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ResidualBlock(w[0], w[1], norm))  # 1/4
        self.stage2 = ResidualBlock(w[1], w[2], norm, stride=2)  # 1/8
        self.stage3 = ResidualBlock(w[2], w[3], norm, stride=2)  # 1/16

        self.embed = nn.Conv2d(w[3], hidden, 1)
        grid = img_size // PATCH_GRID_STRIDE
        self.position = nn.Parameter(torch.zeros(1, hidden, grid, grid))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.embed_dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=int(hidden * mlp_ratio), dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)

        d = [8 * base, 4 * base, 2 * base, base, max(base // 2, 4)]
        self.conv_more = nn.Sequential(*_conv_norm_relu(hidden, d[0], norm))
        self.decoder = nn.ModuleList([
            DecoderBlock(d[0], w[2], d[1], norm),  # to 1/8, skip stage2
            DecoderBlock(d[1], w[1], d[2], norm),  # to 1/4, skip stage1
            DecoderBlock(d[2], w[0], d[3], norm),  # to 1/2, skip root
            DecoderBlock(d[3], 0, d[4], norm),  # to full size, no skip (as TransUNet)
        ])
        self.head = nn.Sequential(nn.Conv2d(d[4], out_channels, 3, padding=1), output_activation(activation))

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learned position embedding resized to a ``grid`` of tokens, (1, hidden, gy, gx)."""
        if tuple(self.position.shape[2:]) == tuple(grid):
            return self.position
        return F.interpolate(self.position, size=grid, mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        # At least a 2x2 token grid: instance norm needs more than one pixel at 1/16.
        x = pad_to_multiple(x, PATCH_GRID_STRIDE, minimum=2 * PATCH_GRID_STRIDE)
        s1 = self.root(x)
        s2 = self.stage1(s1)
        s3 = self.stage2(s2)
        tokens = self.embed(self.stage3(s3))
        n, hidden, gy, gx = tokens.shape
        tokens = self.embed_dropout(tokens + self.position_embedding((gy, gx)))
        tokens = self.transformer(tokens.flatten(2).transpose(1, 2))  # (N, gy * gx, hidden)
        h = self.conv_more(tokens.transpose(1, 2).reshape(n, hidden, gy, gx))
        for block, skip in zip(self.decoder, (s3, s2, s1, None)):
            h = block(h, skip)
        return crop_spatial(self.head(h), spatial)
