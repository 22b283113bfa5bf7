"""pix2pixHD (Wang et al. 2018): coarse-to-fine generator and multi-scale discriminator, 2D.

Paper 000 found pix2pixHD the best of its three architectures for tissue photographs ->
IMC protein maps, trained on whole regions so that the receptive field covers large
structures.

- ``Pix2PixHDGenerator`` ("pix2pixhd"): a global generator (ResNet-blocks generator with
  ``n_downsample_global`` downsamplings) runs on the input average-pooled
  ``n_local_enhancers`` times; each local enhancer adds the features of the next finer
  input scale to the coarser output and refines them with ``n_blocks_local`` residual
  blocks. ``n_local_enhancers=0`` is the global generator alone.
- ``MultiscaleDiscriminator`` ("multiscale_patchgan"): ``num_D`` PatchGANs on the input
  average-pooled 0, 1, ... num_D - 1 times. ``forward`` returns, per scale, the list of
  intermediate feature maps with the patch scores last, which the feature-matching loss
  of ``training.pix2pixhd_loss`` needs; ``scores(outputs)`` picks the score maps.

Defaults are smaller than pix2pixHD's 2048x1024 setting (ngf 64, 4 global
downsamplings, no width cap) so that the network trains and predicts on a CPU; pass
``ngf=64, n_downsample_global=4, max_width=1024`` for the original widths.
"""

from __future__ import annotations

import torch
from torch import nn

from .factory import register
from .layers import norm_layer, output_activation
from .patchgan import PatchGAN
from .pix2pix_unet import crop_spatial, pad_to_multiple
from .resnet import ResnetBlock


def _downsample(x: torch.Tensor) -> torch.Tensor:
    # pix2pixHD's AvgPool2d(3, stride=2, padding=1, count_include_pad=False): half size, no dark border.
    return nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def _conv_norm_relu(cin: int, cout: int, norm: str, **conv) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, bias=norm == "none", **conv), norm_layer(norm, cout, 2), nn.ReLU(True)]


def _up_norm_relu(cin: int, cout: int, norm: str) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=norm == "none"),
            norm_layer(norm, cout, 2), nn.ReLU(True)]


class GlobalGenerator(nn.Module):
    """pix2pixHD's G1 without its output layer: features of width ``ngf`` at input size."""

    def __init__(self, in_channels: int, ngf: int, n_downsampling: int, n_blocks: int, norm: str, max_width: int):
        super().__init__()
        widths = [min(ngf * 2**i, max_width) for i in range(n_downsampling + 1)]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), *_conv_norm_relu(in_channels, widths[0], norm, kernel_size=7)]
        for i in range(n_downsampling):
            layers += _conv_norm_relu(widths[i], widths[i + 1], norm, kernel_size=3, stride=2, padding=1)
        layers += [ResnetBlock(widths[-1], norm) for _ in range(n_blocks)]
        for i in reversed(range(n_downsampling)):
            layers += _up_norm_relu(widths[i + 1], widths[i], norm)
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """One G2 level: finer-scale input features + coarser output, refined, upsampled 2x."""

    def __init__(self, in_channels: int, width: int, n_blocks: int, norm: str):
        super().__init__()
        self.down = nn.Sequential(
            nn.ReflectionPad2d(3), *_conv_norm_relu(in_channels, width, norm, kernel_size=7),
            *_conv_norm_relu(width, 2 * width, norm, kernel_size=3, stride=2, padding=1))
        self.up = nn.Sequential(*[ResnetBlock(2 * width, norm) for _ in range(n_blocks)],
                                *_up_norm_relu(2 * width, width, norm))

    def forward(self, x: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x) + coarser)


@register("pix2pixhd")
class Pix2PixHDGenerator(nn.Module):
    """Coarse-to-fine pix2pixHD generator; see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 32, n_downsample_global: int = 3,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 max_width: int = 512, norm: str = "instance", activation: str = "tanh"):
        super().__init__()
        if n_downsample_global < 1 or n_local_enhancers < 0:
            raise ValueError("n_downsample_global must be at least 1 and n_local_enhancers at least 0")
        self.n_local_enhancers = n_local_enhancers
        # The global generator runs at 1 / 2**n_local_enhancers and halves n_downsample_global times.
        self.size_multiple = 2 ** (n_local_enhancers + n_downsample_global)
        # Each enhancer works at half the width of the next coarser level, as in pix2pixHD;
        # max_width caps only the global generator's inner levels.
        global_width = ngf * 2**n_local_enhancers
        self.global_generator = GlobalGenerator(in_channels, global_width, n_downsample_global, n_blocks_global,
                                                norm, max(max_width, global_width))
        self.enhancers = nn.ModuleList(
            LocalEnhancer(in_channels, ngf * 2**(n_local_enhancers - n), n_blocks_local, norm)
            for n in range(1, n_local_enhancers + 1))
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), output_activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        # At least twice the multiple: instance norm needs more than one pixel at the bottleneck.
        x = pad_to_multiple(x, self.size_multiple, minimum=2 * self.size_multiple)
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(_downsample(pyramid[-1]))
        features = self.global_generator(pyramid[-1])
        for enhancer, finer in zip(self.enhancers, reversed(pyramid[:-1])):
            features = enhancer(finer, features)
        return crop_spatial(self.head(features), spatial)


@register("multiscale_patchgan")
class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs on successively halved inputs; see the module docstring."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, num_D: int = 3, norm: str = "instance"):
        super().__init__()
        if num_D < 1:
            raise ValueError("num_D must be at least 1")
        self.n_layers = n_layers
        self.num_D = num_D
        # discriminators[0] sees the full-size input, discriminators[k] the input halved k times.
        self.discriminators = nn.ModuleList(
            PatchGAN(in_channels, ndf=ndf, n_layers=n_layers, spatial_dims=2, norm=norm) for _ in range(num_D))

    @staticmethod
    def _stages(critic: PatchGAN) -> list[nn.Sequential]:
        # Split PatchGAN's flat Sequential after each LeakyReLU: conv(-norm)-LeakyReLU groups,
        # then the final score convolution (pix2pixHD's getIntermFeat layout, n_layers + 2 maps).
        stages, current = [], []
        for layer in critic.model:
            current.append(layer)
            if isinstance(layer, nn.LeakyReLU):
                stages.append(nn.Sequential(*current))
                current = []
        stages.append(nn.Sequential(*current))
        return stages

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale (full size first), the feature maps of each stage; the last one is the scores."""
        outputs = []
        for k, critic in enumerate(self.discriminators):
            if k:
                x = _downsample(x)
            features, h = [], x
            for stage in self._stages(critic):
                h = stage(h)
                features.append(h)
            outputs.append(features)
        return outputs

    @staticmethod
    def scores(outputs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """The patch-score map of each scale from ``forward``'s outputs."""
        return [features[-1] for features in outputs]
