"""Building blocks shared by the architectures: dimension-generic conv, norm and activation."""

from __future__ import annotations

from torch import nn


def conv_cls(spatial_dims: int):
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_cls(spatial_dims: int):
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def norm_layer(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    """Normalisation by name; "group" uses up to 8 groups, which works at any batch size."""
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r} (batch, instance, group, none)")


def output_activation(kind: str) -> nn.Module:
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown output activation {kind!r} (sigmoid, tanh, none)")


def check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")


def input_multiple(depth: int) -> int:
    """Spatial sizes a network with ``depth`` 2x poolings needs to be a multiple of."""
    return 2 ** depth


