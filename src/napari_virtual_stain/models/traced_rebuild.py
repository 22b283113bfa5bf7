"""Rebuild a traced DeepLIIF translator (TorchScript) as an eager module that runs faster on a CPU.

A release folder's ``G1.pt``..``G4.pt`` are ``torch.jit.trace`` recordings of deepliif's
ResNet-9blocks generator. Run as recorded, every 3x3 convolution goes to oneDNN's direct
kernel (PyTorch sends batches under 16 nowhere else), which is most of DeepLIIF's time on a
CPU. Here the recording is read back layer by layer (each leaf's one ATen call and its
constant arguments, from its graph) into plain PyTorch calls, with two faster choices:
wide stride-1 convolutions go through NNPACK (:mod:`..engine.fast_conv`), and transposed
convolutions run in channels_last layout (2x faster in oneDNN on the CPUs measured). A zero
padding followed by an unpadded convolution becomes one padded convolution.

Only what is understood is rebuilt: Sequential containers, deepliif's ResnetBlock (``x +
conv_block(x)``) and leaves that are one convolution, padding, batch norm, ReLU, tanh, sigmoid
or inference dropout. Anything else, or a rebuilt module whose output on a probe differs from
the recording's by more than ``PROBE_TOLERANCE``, keeps the recording: the rebuild is only
ever a faster way to the same answer.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import fast_conv

log = logging.getLogger(__name__)

# Largest difference allowed between the recording and the rebuild on the probe, in the
# generator's output units ([-1, 1]; one 8-bit level is 2/255 = 0.0078).
PROBE_TOLERANCE = 1e-3
PROBE_SIDE = 64


class NotRebuildable(Exception):
    """The recording holds something this module does not translate."""


def _const(value):
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_const(v) for v in node.inputs()]
    raise NotRebuildable(f"argument from {node.kind()}")


def _attribute(script: nn.Module, value):
    """The tensor a graph value reads from its module (``prim::GetAttr``), or None for a None constant."""
    node = value.node()
    if node.kind() == "prim::GetAttr":
        return getattr(script, node.s("name")).detach()
    if node.kind() == "prim::Constant" and value.toIValue() is None:
        return None
    raise NotRebuildable(f"tensor from {node.kind()}")


def _one_call(script: nn.Module):
    calls = [n for n in script.graph.nodes() if n.kind() not in ("prim::Constant", "prim::ListConstruct", "prim::GetAttr")]
    if len(calls) != 1:
        raise NotRebuildable(f"{script.original_name} makes {len(calls)} calls")
    return calls[0], list(calls[0].inputs())


class Conv(nn.Module):
    def __init__(self, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.transposed, self.output_padding, self.groups = bool(transposed), list(output_padding), int(groups)

    def _plain(self) -> bool:
        return (not self.transposed and self.stride == [1, 1] and self.dilation == [1, 1] and self.groups == 1
                and self.padding[0] == self.padding[1])

    def forward(self, x):
        if self.transposed:
            if x.device.type == "cpu":  # oneDNN's transposed kernel is about 2x faster in this layout
                x = x.contiguous(memory_format=torch.channels_last)
            return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                      self.groups, self.dilation)
        if self._plain():
            return fast_conv.conv2d(x, self.weight, self.bias, self.padding[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Pad(nn.Module):
    def __init__(self, pad, mode, value):
        super().__init__()
        self.pad, self.mode, self.value = list(pad), mode, value

    def forward(self, x):
        return F.pad(x, self.pad, self.mode, self.value) if self.mode == "constant" else F.pad(x, self.pad, self.mode)


class BatchNorm(nn.Module):
    """deepliif's traced batch norm: with its running statistics removed it normalises each
    tile by that tile's own statistics (``training=True``, no running buffers)."""

    def __init__(self, weight, bias, mean, var, training, eps):
        super().__init__()
        self.weight = None if weight is None else nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)
        self.training_stats, self.eps = bool(training), float(eps)

    def forward(self, x):
        if self.training_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps)


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        # Added into the body's fresh output: it keeps the body's (NNPACK's NCHW) layout instead of
        # converting every block to the input's channels_last.
        return self.body(x).add_(x)


def _leaf(script: nn.Module) -> nn.Module:
    node, args = _one_call(script)
    kind = node.kind()
    if kind == "aten::_convolution":
        (stride, padding, dilation, transposed, output_padding, groups) = (_const(a) for a in args[3:9])
        return Conv(_attribute(script, args[1]), _attribute(script, args[2]), stride, padding, dilation,
                    transposed, output_padding, groups)
    if kind == "aten::pad":
        return Pad(_const(args[1]), _const(args[2]), _const(args[3]) or 0.0)
    if kind == "aten::constant_pad_nd":
        return Pad(_const(args[1]), "constant", float(_const(args[2])))
    if kind in ("aten::reflection_pad2d", "aten::replication_pad2d"):
        return Pad(_const(args[1]), "reflect" if "reflection" in kind else "replicate", None)
    if kind == "aten::batch_norm":
        weight, bias, mean, var = (_attribute(script, a) for a in args[1:5])
        training, eps = bool(_const(args[5])), _const(args[7])
        if not training and (mean is None or var is None):
            raise NotRebuildable("batch norm without statistics")
        return BatchNorm(weight, bias, mean if not training else None, var if not training else None, training, eps)
    if kind in ("aten::relu", "aten::relu_"):
        return nn.ReLU(inplace=kind.endswith("_"))  # in place exactly where the recording is
    if kind in ("aten::leaky_relu", "aten::leaky_relu_"):
        return nn.LeakyReLU(float(_const(args[1])), inplace=kind.endswith("_"))
    if kind == "aten::tanh":
        return nn.Tanh()
    if kind == "aten::sigmoid":
        return nn.Sigmoid()
    if kind in ("aten::dropout", "aten::feature_dropout") and not _const(args[2]):
        return nn.Identity()  # recorded with train=False
    raise NotRebuildable(kind)


def _simplify(layers: list[nn.Module]) -> list[nn.Module]:
    """A symmetric zero padding followed by an unpadded plain convolution becomes one padded
    convolution; a ReLU after a convolution or batch norm of the same container (a fresh tensor
    no one else holds) works in place."""
    out: list[nn.Module] = []
    for layer in layers:
        prev = out[-1] if out else None
        if isinstance(layer, nn.ReLU) and isinstance(prev, (Conv, BatchNorm)):
            out.append(nn.ReLU(inplace=True))
        elif (isinstance(layer, Conv) and isinstance(prev, Pad) and prev.mode == "constant" and not prev.value
                and len(set(prev.pad)) == 1 and len(prev.pad) == 4 and layer.padding == [0, 0] and layer._plain()):
            layer.padding = [prev.pad[0]] * 2
            out[-1] = layer
        else:
            out.append(layer)
    return out


def _rebuild(script: nn.Module) -> nn.Module:
    name = script.original_name
    children = list(script.named_children())
    if name == "Sequential":
        return nn.Sequential(*_simplify([_rebuild(child) for _, child in children]))
    if name == "ResnetBlock" and [n for n, _ in children] == ["conv_block"]:
        kinds = [n.kind() for n in script.graph.nodes() if n.kind().startswith("aten::")]
        if kinds != ["aten::add"]:
            raise NotRebuildable(f"ResnetBlock doing {kinds}")
        return Residual(_rebuild(children[0][1]))
    if name == "ResnetGenerator" and [n for n, _ in children] == ["model"]:
        return _rebuild(children[0][1])
    if children:
        raise NotRebuildable(name)
    return _leaf(script)


def _first_conv(module: nn.Module) -> Conv:
    for layer in module.modules():
        if isinstance(layer, Conv):
            return layer
    raise NotRebuildable("no convolution")


def rebuild_traced(script: nn.Module) -> nn.Module | None:
    """The eager rebuild of a traced deepliif translator, or None when it cannot be trusted.

    Trusted means: every part was understood, and on a seeded probe tile the rebuild's output
    is within ``PROBE_TOLERANCE`` of the recording's.
    """
    try:
        rebuilt = _rebuild(script).eval()
        first = _first_conv(rebuilt)
        channels = first.weight.shape[0 if first.transposed else 1] * (1 if first.transposed else first.groups)
        probe = torch.rand(1, channels, PROBE_SIDE, PROBE_SIDE, generator=torch.Generator().manual_seed(0)) * 2 - 1
        # Unoptimised: TorchScript's first-call optimisation of a recording the rebuild replaces costs
        # about 0.1 s a translator for nothing.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            expected = script(probe)
        with torch.no_grad():
            got = rebuilt(probe)
        if got.shape != expected.shape or not bool(((got - expected).abs() <= PROBE_TOLERANCE).all()):
            log.info("%s: the rebuild differs from the recording on the probe; the recording runs", script.original_name)
            return None
        return rebuilt
    except (NotRebuildable, RuntimeError, AttributeError, TypeError, ValueError) as err:
        log.info("%s: not rebuilt (%s); the recording runs", getattr(script, "original_name", "?"), err)
        return None
