"""U-Net in 2D and 3D (Ronneberger et al.), the workhorse of virtual staining.

Configurable depth (number of 2x poolings), base width (doubling per level, capped),
normalisation and output activation. Inputs whose spatial size is not a multiple of
2**depth are padded by reflection inside ``forward`` and cropped back, so the network
accepts any tile shape.

Options for speed (the defaults build the original network, so its checkpoints load as
before): ``stem`` runs the whole U-Net on a space-to-depth copy of the input
(``pixel_unshuffle``: a 2x2 or 4x4 block of pixels becomes channels, as UNeXt2/VSCyto2D do)
and puts the pixels back with ``pixel_shuffle`` after the head, so no layer works on
full-resolution maps; ``skip="add"`` adds the skip connection to the upsampled features
instead of concatenating them (half the first decoder convolution, no copy);
``fold_bn`` folds each batch norm into the convolution before it in eval mode.
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


# Named 2D shapes (arch_args without the channel counts) for the training scripts and
# bench/bench_2d_architectures.py. One 1024x1024 forward on a 2-core AVX2 EPYC (fp32, timed
# interleaved in one run) costs about 0.1x (s4d3b32) and 0.15-0.2x (s2d4b16-add) of d4b16's.
SHAPES_2D = {
    "unet-d4b16": ("2D U-Net depth 4, base 16, widths <= 128",
                   {"depth": 4, "base": 16, "max_width": 128, "norm": "batch", "activation": "sigmoid"}),
    "unet-s4d3b32": ("2D U-Net on a 4x4 space-to-depth stem (1/4 resolution inside), depth 3, base 32, widths <= 128, "
                     "pixel-shuffle output, batch norm folded at inference",
                     {"depth": 3, "base": 32, "max_width": 128, "norm": "batch", "activation": "sigmoid", "stem": 4,
                      "fold_bn": True}),
    "unet-s2d4b16-add": ("2D U-Net on a 2x2 space-to-depth stem (1/2 resolution inside), depth 4, base 16, widths "
                         "<= 128, additive skips, pixel-shuffle output, batch norm folded at inference",
                         {"depth": 4, "base": 16, "max_width": 128, "norm": "batch", "activation": "sigmoid",
                          "stem": 2, "skip": "add", "fold_bn": True}),
}


def folded_conv_bn(conv: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution doing ``bn(conv(x))`` for a batch norm in eval mode.

    The formula of ``torch.nn.utils.fusion.fuse_conv_bn_weights``, written out so that it
    neither copies the module nor wraps the result in new leaf Parameters (gradients still
    reach the real weights when someone differentiates an eval-mode network).
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * scale + bn.bias


class FoldedConvBlock(ConvBlock):
    """A ConvBlock whose batch norms are folded into its convolutions in eval mode.

    Each batch norm on a big map reads and writes the whole map once more (memory-bound: 15%
    of a 1024x1024 forward of the bundled U-Net on a 2-core CPU); folded, it costs a few
    multiplications of the weights per forward. The folded weights are made afresh on every
    call (about 0.2 ms a block on a 2-core CPU: 2-3% of a 1024x1024 view with the s4d3b32
    shape), so they can never be stale after ``load_state_dict`` or training.
    Training, and norms other than batch norm, take the ordinary path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self[1]
        if self.training or not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_mean is None:
            return super().forward(x)
        for i in (0, 3):
            weight, bias = folded_conv_bn(self[i], self[i + 1])
            x = F.leaky_relu(self[i]._conv_forward(x, weight, bias), 0.1, inplace=True)
        return x


@register("unet")
class UNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2, depth: int = 4,
                 base: int = 32, max_width: int = 512, norm: str = "batch", activation: str = "sigmoid",
                 dropout: float = 0.0, stem: int = 1, skip: str = "cat", fold_bn: bool = False):
        super().__init__()
        check_spatial_dims(spatial_dims)
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if stem not in (1, 2, 4):
            raise ValueError(f"stem must be 1 (none), 2 or 4, not {stem!r}")
        if stem > 1 and spatial_dims != 2:
            raise ValueError("a space-to-depth stem is 2D only")
        if skip not in ("cat", "add"):
            raise ValueError(f"skip must be 'cat' or 'add', not {skip!r}")
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.stem, self.skip = int(stem), skip
        # Inputs are padded to this internally; the Predictor fits its tiles to it.
        self.size_multiple = self.stem * 2 ** depth
        block = FoldedConvBlock if fold_bn else ConvBlock
        widths = [min(base * 2**i, max_width) for i in range(depth + 1)]
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        up = conv_transpose_cls(spatial_dims)
        self.encoders = nn.ModuleList()
        cin = in_channels * self.stem ** 2
        for w in widths[:-1]:
            self.encoders.append(block(cin, w, spatial_dims, norm))
            cin = w
        self.pool = pool(2)
        self.bottleneck = block(widths[-2], widths[-1], spatial_dims, norm)
        self.dropout = {2: nn.Dropout2d, 3: nn.Dropout3d}[spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(up(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(block((2 if skip == "cat" else 1) * widths[i], widths[i], spatial_dims, norm))
        # With a stem, the head gives each output channel's stem x stem pixels as channels
        # (consecutive rows, as pixel_shuffle reads them; replace_output_head moves them together).
        self.head_rows_per_output = self.stem ** 2
        self.head = conv_cls(spatial_dims)(widths[0], out_channels * self.head_rows_per_output, 1)
        self.activation = output_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        multiple = self.size_multiple
        pads = [(-s) % multiple for s in spatial]
        if any(pads):
            # F.pad takes (last-dim-left, last-dim-right, ...); pad only on the far side.
            pad_arg = [p for pair in reversed([(0, p) for p in pads]) for p in pair]
            mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
            x = F.pad(x, pad_arg, mode=mode)
        if self.stem > 1:
            x = F.pixel_unshuffle(x, self.stem)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1) if self.skip == "cat" else up(x) + skip)
        x = self.head(x)
        if self.stem > 1:
            x = F.pixel_shuffle(x, self.stem)
        x = self.activation(x)
        if any(pads):
            x = x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        return x
