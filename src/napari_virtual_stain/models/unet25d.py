"""The 2.5D U-Net: a 2D U-Net whose input channels are a window of z planes (see models.zwindow)."""

from __future__ import annotations

from .factory import register
from .unet import UNet


@register("unet-2.5d")
class UNet25D(UNet):
    """``in_channels`` original channels x ``planes`` planes in, ``out_channels`` of the centre plane out.

    The planes are stacked as channels at the first convolution (as in in-silico labeling):
    every later layer is the 2D U-Net's, so it costs about what a 2D U-Net costs.
    """

    def __init__(self, in_channels: int, out_channels: int, planes: int = 5, centre: int | None = None,
                 depth: int = 4, base: int = 32, max_width: int = 512, norm: str = "batch",
                 activation: str = "sigmoid", dropout: float = 0.0, stem: int = 1, skip: str = "cat",
                 fold_bn: bool = False):
        centre = planes // 2 if centre is None else centre
        if planes < 1 or not 0 <= centre < planes:
            raise ValueError(f"a window of {planes} planes cannot be centred on its plane {centre}")
        super().__init__(in_channels * planes, out_channels, spatial_dims=2, depth=depth, base=base,
                         max_width=max_width, norm=norm, activation=activation, dropout=dropout,
                         stem=stem, skip=skip, fold_bn=fold_bn)
        self.planes, self.centre = int(planes), int(centre)
