"""bioimage.io model packages in: a folder, its ``rdf.yaml``/``bioimageio.yaml``, or the ``.zip``.

bioimageio.spec parses and validates the description (formats 0.4 and 0.5; 0.4 is converted
to 0.5 by the library, so one code path reads both). Nothing is downloaded: the description
is read with the library's I/O checks off (they would fetch every URL it names), and the
files this model then uses — its weights, architecture source, test tensors — are checked
here, locally, against their sha256 with the library's own check.

A network from a package becomes our :class:`ModelCard` plus :class:`PackageNetwork`, an
``nn.Module`` the one Predictor runs like any other: its input normalisation is the
package's preprocessing (models.bioimageio_processing), its forward is the package's
network and postprocessing, and it tells the Predictor the tile sizes the package accepts
(``min_tile``, ``size_multiple``, ``check_tile``).

Packages we exported ourselves (their config holds our card and their architecture is our
own factory) load as the original network, from the state dict, with no code from the
package at all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.device import AUTO_PRECISION
from ..errors import CheckpointError, InputError, plain_text
from .bioimageio_processing import KIND, Postprocessing, check_postprocessing, tensor_json
from .bioimageio_weights import (OURS, PROGRAM_FORMATS, choose_weights, load_network, our_card, our_card_or_none,
                                 verify_file)
from .card import ModelCard

DESCRIPTION_FILES = ("bioimageio.yaml", "rdf.yaml")
DEFAULT_TILE_XY, DEFAULT_TILE_Z = 512, 32


def description_source(path: str | os.PathLike) -> Path | None:
    """The file bioimageio.spec should open for ``path``, or None when it is not a package."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in DESCRIPTION_FILES if (path / name).is_file()]
        found += sorted(path.glob("*.bioimageio.yaml"))
        return found[0] if found else None
    if path.is_file() and (path.name in DESCRIPTION_FILES or path.name.endswith(".bioimageio.yaml")):
        return path
    if path.is_file() and path.suffix.lower() == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return None
        return path if names & set(DESCRIPTION_FILES) or any(n.endswith(".bioimageio.yaml") for n in names) else None
    return None


def display_name(path: str | os.PathLike) -> str:
    """The package's name in sentences: its folder for a description file, else the file or folder."""
    path = Path(path)
    return path.parent.name if path.is_file() and path.suffix.lower() in (".yaml", ".yml") else path.name


def is_package(path: str | os.PathLike) -> bool:
    return description_source(path) is not None


def _first_error(summary) -> str:
    errors = list(summary.errors) if summary is not None else []
    if not errors:
        return f"its validation status is {getattr(summary, 'status', 'unknown')}"
    err = errors[0]
    where = ".".join(str(part) for part in err.loc) if err.loc else "the description"
    return f"{where}: {plain_text(err.msg, 200)}"


def load_description(path: str | os.PathLike):
    """The package's model description, validated by bioimageio.spec (0.4 converted to 0.5)."""
    source = description_source(path)
    name = display_name(path)
    if source is None:
        raise CheckpointError(f"{name} is not a bioimage.io package: it has no bioimageio.yaml or rdf.yaml.")
    try:
        from bioimageio.spec import InvalidDescr, load_description as spec_load
        from bioimageio.spec.model import v0_5
    except ImportError as err:  # an optional dependency in principle; installed with the plugin
        raise CheckpointError(f"Reading bioimage.io packages needs bioimageio.core ({err.name} is missing).") from err
    try:
        # perform_io_checks=False: the library would otherwise download every URL the description names.
        descr = spec_load(str(source), perform_io_checks=False, format_version="latest")
    except Exception as err:  # the loader raises for unreadable YAML, broken zips...
        raise CheckpointError(f"The bioimage.io description in {name} could not be read: {plain_text(err, 200)}") from err
    if isinstance(descr, InvalidDescr):
        raise CheckpointError(f"The bioimage.io description in {name} does not validate ({_first_error(descr.validation_summary)}).")
    if not isinstance(descr, v0_5.ModelDescr):
        raise CheckpointError(f"{name} describes a bioimage.io {getattr(descr, 'type', 'resource')}, not a model.")
    return descr


def _axis_size(axis):
    """(kind, value) of an input space axis: ("fixed", n) or ("range", (min, step))."""
    size = axis.size
    if isinstance(size, int):
        return "fixed", int(size)
    if hasattr(size, "min") and hasattr(size, "step"):
        return "range", (int(size.min), int(size.step))
    raise CheckpointError(f"The package's input axis {axis.id} takes its size from another tensor, "
                          "which a single-input network cannot do.")


def _valid_tile(kind: str, value, target: int) -> int:
    if kind == "fixed":
        return value
    low, step = value
    return low + step * max(0, (target - low) // step)


class TileRule:
    """The tile sizes a package accepts, in the attributes the Predictor reads."""

    def __init__(self, sizes: list[tuple[str, object]]):
        self.sizes = sizes
        ranges = [v for k, v in sizes if k == "range"]
        # One size multiple when every axis accepts all multiples of it above its minimum
        # (min divisible by step): the Predictor then fits tiles to the image.
        regular = len(ranges) == len(sizes) and all(low % step == 0 for low, step in ranges)
        self.size_multiple = math.lcm(*(step for _, step in ranges)) if regular else 0
        self.min_tile = tuple(v if k == "fixed" else -(-v[0] // max(1, self.size_multiple)) * max(1, self.size_multiple)
                              if regular else v[0] for k, v in sizes)

    def default_tile(self) -> list[int]:
        targets = [DEFAULT_TILE_Z, DEFAULT_TILE_XY, DEFAULT_TILE_XY][-len(self.sizes):]
        return [_valid_tile(k, v, t) for (k, v), t in zip(self.sizes, targets)]

    def problem(self, tile) -> str | None:
        for n, (kind, value) in zip(tile, self.sizes):
            if kind == "fixed" and n != value:
                return f"this package takes tiles of exactly {'x'.join(str(v) for _, v in self.sizes)} pixels"
            if kind == "range" and (n < value[0] or (n - value[0]) % value[1]):
                return f"its tiles must be {value[0]} + a multiple of {value[1]} pixels along each axis"
        return None


class PackageNetwork(nn.Module):
    """A package's network and postprocessing on (N, C, *spatial) tiles in our axis order.

    The tile reaching :meth:`forward` is already preprocessed (the card's input normalisation
    is the package's preprocessing). Here it is put into the package's axis order and dtype,
    run (one sample at a time where the package fixes its batch at 1), put back into our
    order and postprocessed as the package describes.
    """

    def __init__(self, network, descr, weight_format: str, rule: TileRule):
        super().__init__()
        inp, out = descr.inputs[0], descr.outputs[0]
        self.network = network if isinstance(network, nn.Module) else None
        self._callable = None if isinstance(network, nn.Module) else network  # ONNX: runs on numpy, CPU
        self.weight_format = weight_format
        self.rule = rule
        self.size_multiple = rule.size_multiple
        self.min_tile = rule.min_tile
        self.in_order = [a.id for a in inp.axes]
        self.in_types = [a.type for a in inp.axes]
        self.out_order = [a.id for a in out.axes]
        self.out_types = [a.type for a in out.axes]
        fixed_batch = [a.size for a in inp.axes if a.type == "batch"]
        self.one_at_a_time = not fixed_batch or fixed_batch[0] == 1
        self.post = Postprocessing(out, _our_order(out))

    def check_tile(self, tile) -> None:
        problem = self.rule.problem(tile)
        if problem:
            raise InputError(f"Tiles of {'x'.join(map(str, tile))} pixels do not fit this bioimage.io model: {problem}.")

    def _to_package(self, x: torch.Tensor) -> torch.Tensor:
        # ours: (N, C, *space); theirs: the declared order, batch/channel possibly absent
        if "channel" not in self.in_types:
            x = x[:, 0]
            ours = ["batch"] + ["space"] * (x.ndim - 1)
        else:
            ours = ["batch", "channel"] + ["space"] * (x.ndim - 2)
        if "batch" not in self.in_types:
            x, ours = x[0], ours[1:]
        space = iter(i for i, t in enumerate(ours) if t == "space")
        index = {t: i for i, t in enumerate(ours) if t != "space"}
        perm = [next(space) if t == "space" else index[t] for t in self.in_types]
        return x.permute(perm)  # float: data.type describes the raw input, before preprocessing

    def _from_package(self, y: torch.Tensor) -> torch.Tensor:
        types = list(self.out_types)
        if "batch" not in types:
            y, types = y[None], ["batch"] + types
        if "channel" not in types:
            y, types = y.unsqueeze(1), [types[0], "channel"] + types[1:]
        order = [types.index("batch"), types.index("channel")] + [i for i, t in enumerate(types) if t == "space"]
        return y.permute(order)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        xp = self._to_package(x)
        if self._callable is not None:
            y = torch.from_numpy(np.asarray(self._callable(xp.detach().cpu().numpy()))).to(x.device)
        else:
            y = self.network(xp)
        if isinstance(y, (list, tuple)):
            y = y[0]
        return self._from_package(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self._run(x[i:i + 1]) for i in range(x.shape[0])] if self.one_at_a_time else [self._run(x)]
        y = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.post.empty:
            return y.float()
        return torch.from_numpy(self.post(y.detach().float().cpu().numpy())).to(x.device)


def _our_order(tensor) -> list:
    """[channel axis id or None, space axis ids] of a tensor description."""
    channel = [a.id for a in tensor.axes if a.type == "channel"]
    return [channel[0] if channel else None] + [a.id for a in tensor.axes if a.type == "space"]


def _channel_names(tensor) -> list[str]:
    channel = [a for a in tensor.axes if a.type == "channel"]
    if not channel:
        return [str(tensor.id)]
    names = [str(n) for n in getattr(channel[0], "channel_names", [])]
    return names or [f"{tensor.id} {i}" for i in range(int(channel[0].size))]


def _check_shapes(descr, name: str) -> None:
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise CheckpointError(f"{name} has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                              "only packages with one input image and one output image are supported.")
    inp, out = descr.inputs[0], descr.outputs[0]
    for tensor in (inp, out):
        other = sorted({a.type for a in tensor.axes} - {"batch", "channel", "space"})
        if other:
            raise CheckpointError(f"{name}'s tensor {tensor.id} has a {other[0]} axis; only batch, channel and "
                                  "space axes (2D or 3D images) are supported.")
    n_in = [a for a in inp.axes if a.type == "space"]
    n_out = [a for a in out.axes if a.type == "space"]
    if len(n_in) not in (2, 3) or len(n_out) != len(n_in):
        raise CheckpointError(f"{name} maps {len(n_in)} space axes to {len(n_out)}; only 2D or 3D images "
                              "to images of the same kind are supported.")
    by_id = {a.id: a for a in n_in}
    for axis, partner in zip(n_out, n_in):
        size = axis.size
        if isinstance(size, int):  # a fixed output is fine where the input is fixed to the same size
            same = isinstance(partner.size, int) and partner.size == size
        else:
            ref = by_id.get(getattr(size, "axis_id", None))
            same = (getattr(size, "tensor_id", None) == inp.id and getattr(size, "offset", 0) == 0 and ref is not None
                    and float(getattr(axis, "scale", 1.0)) == float(getattr(ref, "scale", 1.0)))
        if not same:
            raise CheckpointError(f"{name}'s output axis {axis.id} is not the size of its input ({size}); "
                                  "only outputs on the input's pixel grid can be placed back on the image.")


def build_card(descr, weight_format: str, source: Path, rule: TileRule) -> ModelCard:
    inp, out = descr.inputs[0], descr.outputs[0]
    halo = max([int(getattr(a, "halo", 0) or 0) for a in out.axes if a.type == "space"] + [0])
    tile = rule.default_tile()
    overlap = [min(t - 1, max(2 * halo, 32 if len(tile) == 2 or i else 4)) for i, t in enumerate(tile)]
    scale = [float(getattr(a, "scale", 1.0)) for a in inp.axes if a.type == "space" and getattr(a, "unit", None)
             in ("micrometer",)]
    training = getattr(descr, "training_data", None)
    ours = our_card_or_none(descr)
    if ours is not None and rule.problem(ours.tile) is None:  # our export run by its own weights: our tiles
        tile, overlap = list(ours.tile), list(ours.overlap)
    return ModelCard(
        name=str(descr.name), task="stain", architecture="bioimageio",
        arch_args={"weights": weight_format, "package": str(source)},
        spatial_dims=len(tile), input_channels=_channel_names(inp), output_channels=_channel_names(out),
        input_normalisation={"kind": KIND, "tensor": tensor_json(inp), "order": _our_order(inp)},
        output_activation="none", tile=tile, overlap=overlap,
        pixel_size_um=scale[-1] if scale else None,
        description=str(descr.description),
        training=ours.training if ours else {"data": str(getattr(training, "id", None) or training)} if training else {},
        scores=ours.scores if ours else {},
        extra={"bioimageio": {"package": str(source), "weights": weight_format, "license": str(descr.license),
                              "format_version": str(descr.format_version), "program": weight_format in PROGRAM_FORMATS},
               AUTO_PRECISION: "fp32"})


def load_package(path: str | os.PathLike, weight_format: str | None = None) -> tuple[nn.Module, ModelCard]:
    """A package's network and card, ready for the Predictor (eval mode, on the CPU)."""
    descr = load_description(path)
    name = display_name(path)
    _check_shapes(descr, name)
    fmt, weights = choose_weights(descr, name, weight_format)
    if fmt == OURS:  # one of our own exports: the original network, from its state dict alone
        card = our_card(descr)
        model = load_network(descr, fmt, weights, name, card)
        return model.eval(), card
    check_postprocessing(descr.outputs[0])
    rule = TileRule([_axis_size(a) for a in descr.inputs[0].axes if a.type == "space"])
    network = load_network(descr, fmt, weights, name)
    module = PackageNetwork(network, descr, fmt, rule)
    return module.eval(), build_card(descr, fmt, Path(path), rule)


def package_card(path: str | os.PathLike, weight_format: str | None = None) -> ModelCard:
    """The card :func:`load_package` would give, without loading the network."""
    descr = load_description(path)
    name = display_name(path)
    _check_shapes(descr, name)
    fmt, _ = choose_weights(descr, name, weight_format)
    if fmt == OURS:
        return our_card(descr)
    check_postprocessing(descr.outputs[0])
    return build_card(descr, fmt, Path(path), TileRule([_axis_size(a) for a in descr.inputs[0].axes if a.type == "space"]))


def package_notice(path: str | os.PathLike, weight_format: str | None = None) -> str | None:
    """A sentence to show before loading a package whose chosen weights run code, else None."""
    descr = load_description(path)
    fmt, weights = choose_weights(descr, display_name(path), weight_format)
    if fmt == "torchscript":
        return (f"{display_name(path)} holds TorchScript weights: TorchScript is a program, not plain numbers; "
                "load only packages you trust.")
    if fmt == "pytorch_state_dict":
        arch = weights.architecture
        where = getattr(arch, "source", None) or getattr(arch, "import_from", "a library")
        return (f"{display_name(path)} builds its network with Python code ({where}): it runs on this computer "
                "when loaded; load only packages you trust.")
    return None


def test_tensors(descr) -> tuple[np.ndarray, np.ndarray]:
    """The package's own test input and output, read from its files (checked against their sha256)."""
    from bioimageio.core.io import load_tensor

    arrays = []
    for tensor in (descr.inputs[0], descr.outputs[0]):
        file = tensor.test_tensor
        if file is None:
            raise CheckpointError(f"The package names no test tensor for {tensor.id}.")
        verify_file(file, f"the test tensor of {tensor.id}", descr.name)
        arrays.append(np.asarray(load_tensor(file.source.absolute(), axes=[a.id for a in tensor.axes]).data))
    return arrays[0], arrays[1]
