"""Starting points for training: fine-tune an existing model, or a fresh architecture.

``model_for_training`` returns ``(model, card)`` ready for the Trainer:

- from a model (a bundled/user model name or a ``.pt`` path): its input channel count and
  2D/3D must match the data (otherwise :class:`InputError` naming both). When the wanted
  output channels differ from the model's, the output head (the last convolution) is
  replaced; rows of the old head whose channel name is kept are copied over, so
  fine-tuning "nuclei + membrane" to "nuclei" keeps what the model knew about nuclei. The
  card says what was done.
- from an architecture name (``models.factory``): sensible defaults per architecture
  (U-Net depth 4 / base 32 in 2D, depth 3 / base 16 in 3D; the pix2pix ResNet-9blocks
  generator in 2D), overridable with ``arch_args``.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..models.card import ModelCard
from ..models.factory import ARCHITECTURES, _load_builtin_architectures, build_model

# Tile suggested to the Predictor for a model trained from scratch.
DEFAULT_TILE = {2: [1024, 1024], 3: [40, 320, 320]}
# 64 px of overlap keeps the seams of a depth-4 U-Net under 0.01 (0.06 at 32: bench, README).
DEFAULT_OVERLAP = {2: [64, 64], 3: [8, 32, 32]}


def default_arch_args(arch: str, n_in: int, n_out: int, spatial_dims: int) -> dict[str, Any]:
    """Constructor arguments for a fresh network of ``arch``."""
    if arch == "unet":
        return {"in_channels": n_in, "out_channels": n_out, "spatial_dims": spatial_dims,
                "depth": 4 if spatial_dims == 2 else 3, "base": 32 if spatial_dims == 2 else 16,
                # Batch norm: at prediction time it uses running statistics, so every tile
                # is normalised alike and tiles blend without seams.
                "norm": "batch", "activation": "sigmoid"}
    if arch == "unet-2.5d":  # the 2D U-Net's defaults; planes/centre come from the data (layer_pairs.window_pair)
        if spatial_dims != 2:
            raise InputError("A 2.5D U-Net predicts 2D planes from a window of z planes; it has no 3D form.")
        return {"in_channels": n_in, "out_channels": n_out, "planes": 5, "centre": 2, "depth": 4, "base": 32,
                "norm": "batch", "activation": "sigmoid"}
    if arch == "resnet_generator":
        if spatial_dims != 2:
            raise InputError("The ResNet generator is 2D only; choose 'unet' for 3D stacks.")
        return {"in_channels": n_in, "out_channels": n_out, "ngf": 64, "n_blocks": 9,
                "norm": "instance", "activation": "tanh"}
    args: dict[str, Any] = {"in_channels": n_in, "out_channels": n_out}
    if "spatial_dims" in _parameters(arch):
        args["spatial_dims"] = spatial_dims
    return args


def _parameters(arch: str) -> dict[str, inspect.Parameter]:
    _load_builtin_architectures()  # importing the factory alone does not fill ARCHITECTURES
    if arch not in ARCHITECTURES:
        raise InputError(f"There is no architecture called {arch!r} (known: {', '.join(sorted(ARCHITECTURES))}).")
    return dict(inspect.signature(ARCHITECTURES[arch]).parameters)


def _names(names: Sequence[str] | None, n: int, default: str) -> list[str]:
    names = list(names or [])
    return [names[i] if i < len(names) else f"{default} {i + 1}" for i in range(n)]


def model_for_training(from_model: str | None = None, arch: str | None = None, n_in: int = 1, n_out: int = 1,
                       spatial_dims: int = 2, input_names: Sequence[str] | None = None,
                       output_names: Sequence[str] | None = None, arch_args: dict | None = None,
                       name: str | None = None) -> tuple[nn.Module, ModelCard]:
    """The network and card to train: fine-tune ``from_model`` or build ``arch`` fresh."""
    if (from_model is None) == (arch is None):
        raise InputError("Choose either a model to fine-tune or an architecture to train from scratch (one of them).")
    if from_model is not None:
        return _from_checkpoint(str(from_model), n_in, n_out, spatial_dims, input_names, output_names, name)
    return _from_architecture(arch, n_in, n_out, spatial_dims, input_names, output_names, arch_args, name)


def _from_architecture(arch, n_in, n_out, spatial_dims, input_names, output_names, arch_args, name):
    params = _parameters(arch)
    args = default_arch_args(arch, n_in, n_out, spatial_dims)
    args.update(arch_args or {})
    args["in_channels"], args["out_channels"] = n_in, n_out
    model = build_model(arch, args, error=InputError)
    activation = args.get("activation", params["activation"].default if "activation" in params else "none")
    card = ModelCard(
        name=name or f"{arch}-{spatial_dims}d", task="stain", architecture=arch, arch_args=args,
        spatial_dims=spatial_dims, input_channels=_names(input_names, n_in, "input"),
        output_channels=_names(output_names, n_out, "output"), output_activation=activation,
        tile=list(DEFAULT_TILE[spatial_dims]), overlap=list(DEFAULT_OVERLAP[spatial_dims]),
        description=f"A {arch} trained from scratch with napari-virtual-stain.",
        training={"started_from": f"architecture {arch} (random weights)"},
    )
    return model, card


def _from_checkpoint(from_model, n_in, n_out, spatial_dims, input_names, output_names, name):
    from ..models.registry import load_model

    model, card = load_model(from_model)
    label = card.name
    if card.architecture == "bioimageio":  # a foreign network behind its own processing: nothing here can train it
        raise CheckpointError(f"'{label}' is a bioimage.io package from another tool: it can be run, but only "
                              "napari-virtual-stain models (and packages exported from them) can be fine-tuned.")
    if card.spatial_dims != spatial_dims:
        raise InputError(f"The model '{label}' is {card.spatial_dims}D but the chosen data is {spatial_dims}D.")
    if card.n_in != n_in:
        chosen = f" ({', '.join(input_names)})" if input_names else ""
        raise InputError(f"The model '{label}' expects {card.n_in} input channel(s) ({', '.join(card.input_channels)}) "
                         f"but {n_in} were chosen{chosen}.")
    old_outputs = list(card.output_channels)
    new_outputs = list(output_names) if output_names else (old_outputs if n_out == card.n_out else _names(None, n_out, "output"))
    if len(new_outputs) != n_out:
        raise InputError(f"{n_out} target channels were chosen but {len(new_outputs)} names were given.")
    card = copy.deepcopy(card)
    note = f"fine-tuned from '{label}'"
    if new_outputs != old_outputs:
        keep = [old_outputs.index(n) if n in old_outputs else None for n in new_outputs]
        if n_out == len(old_outputs) and all(k is None for k in keep):
            # Same count, no name in common: the user renamed the channels; keep the head.
            note += f"; outputs {', '.join(old_outputs)} retrained as {', '.join(new_outputs)}"
        else:
            if "out_channels" not in card.arch_args:
                raise CheckpointError(f"The model '{label}' does not say how many outputs it has, so its head cannot be replaced.")
            replace_output_head(model, keep)
            card.arch_args["out_channels"] = n_out
            kept = [n for n, k in zip(new_outputs, keep) if k is not None]
            note += (f"; output head replaced ({', '.join(old_outputs)} -> {', '.join(new_outputs)}"
                     + (f", kept the weights for {', '.join(kept)})" if kept else ", new weights)"))
    card.output_channels = new_outputs
    if input_names:
        card.input_channels = list(input_names)
    card.name = name or f"{label}-finetuned"
    card.description = (card.description + " " if card.description else "") + f"Fine-tuned from '{label}'."
    card.training = {"started_from": note, "previous": {k: v for k, v in card.training.items() if k not in ("previous", "history")}}
    card.scores = {"before_fine_tuning": card.scores} if card.scores else {}
    return model, card


def replace_output_head(model: nn.Module, keep: Sequence[int | None]) -> None:
    """Replace the last convolution by one with ``len(keep)`` outputs, in place.

    ``keep[i]`` is the old output row to copy into new output ``i``, or None for a freshly
    initialised row. A network whose head gives each output channel several rows (a U-Net
    with a space-to-depth stem: one per pixel of a stem x stem block, in order, for
    ``pixel_shuffle``) says how many in ``head_rows_per_output``; they move together.
    """
    rows = int(getattr(model, "head_rows_per_output", 1) or 1)
    # named_modules() lists modules in registration (pre-)order: the last convolution
    # listed is the one closest to the output in the architectures we build.
    # Transposed convolutions count too: the pix2pix U-Net ends in one.
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    if not convs:
        raise CheckpointError("The model has no convolution to use as its output head.")
    full_name, old = convs[-1]
    parent_name, _, attr = full_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    transposed = isinstance(old, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    extra = {"output_padding": old.output_padding} if transposed else {"padding_mode": old.padding_mode}
    new = type(old)(old.in_channels, len(keep) * rows, old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, groups=old.groups, bias=old.bias is not None, **extra)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    out_axis = 1 if transposed else 0  # transposed weights are (in, out, ...)
    with torch.no_grad():
        for i, k in enumerate(keep):
            if k is not None:
                new.weight.narrow(out_axis, i * rows, rows).copy_(old.weight.narrow(out_axis, k * rows, rows))
                if old.bias is not None:
                    new.bias[i * rows:(i + 1) * rows].copy_(old.bias[k * rows:(k + 1) * rows])
    setattr(parent, attr, new)
