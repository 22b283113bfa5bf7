"""A compact DeepLIIF: one U-Net that infers all four modalities and the classified segmentation.

DeepLIIF (paper 001) runs nine generators per tile: four ResNet translators and five U-Net
segmenters. On a 2-core CPU most of that work relearns the same thing -- where the nuclei
are -- nine times. This network shares one encoder-decoder and ends in two heads:

- 12 channels: hematoxylin, DAPI, Lap2 and marker as RGB renderings in [-1, 1] (tanh),
  as DeepLIIF's translators produce them;
- 4 segmentation logits per pixel: background, negative cell, positive cell, border. The
  border class is what splits touching nuclei (DeepLIIF's green outlines); training
  treats it as a class (cross-entropy), not as a colour to regress.

``forward`` draws the class probabilities the way DeepLIIF's fused segmentation is drawn
(red = positive, blue = negative, green = border, each ``2 p - 1``), so the output keeps
the DeepLIIF layout ``(N, 15, H, W)`` and deepliif's cell rules and thresholds apply
unchanged: a pixel is cell where 255 (p_pos + p_neg) > 120 and 255 p_border <= 80, and
positive where p_pos >= p_neg.
"""

from __future__ import annotations

import torch
from torch import nn

from .factory import register
from .unet import UNet

N_MODALITY_CHANNELS = 12
SEG_CLASSES = ("background", "negative", "positive", "border")
BACKGROUND, NEGATIVE, POSITIVE, BORDER = range(len(SEG_CLASSES))


def draw_segmentation(logits: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) class logits -> (N, 3, H, W) DeepLIIF segmentation colours in [-1, 1]."""
    p = torch.softmax(logits.float(), dim=1)
    return torch.stack([p[:, POSITIVE], p[:, BORDER], p[:, NEGATIVE]], dim=1) * 2.0 - 1.0


@register("deepliif-unet")
class DeepLIIFUNet(nn.Module):
    """IHC (N, 3, H, W) in [-1, 1] -> (N, 15, H, W): four modalities and the classified segmentation."""

    def __init__(self, in_channels: int = 3, depth: int = 4, base: int = 16, max_width: int = 128,
                 norm: str = "batch", fold_bn: bool = True):
        super().__init__()
        # fold_bn: in eval mode each batch norm is folded into its convolution (the same answer to
        # rounding, the same weights and state dict), so every model of this kind gets it, old ones too.
        self.trunk = UNet(in_channels, N_MODALITY_CHANNELS + len(SEG_CLASSES), spatial_dims=2, depth=depth,
                          base=base, max_width=max_width, norm=norm, activation="none", fold_bn=fold_bn)
        self.size_multiple = self.trunk.size_multiple

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(modalities in [-1, 1], segmentation logits): what training compares with its targets."""
        y = self.trunk(x)
        return torch.tanh(y[:, :N_MODALITY_CHANNELS]), y[:, N_MODALITY_CHANNELS:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modalities, logits = self.forward_parts(x)
        return torch.cat([modalities, draw_segmentation(logits).to(modalities.dtype)], dim=1)
