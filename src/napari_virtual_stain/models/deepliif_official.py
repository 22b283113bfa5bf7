"""Run a DeepLIIF release folder (the official TorchScript models) through our Predictor.

A release folder holds ``G1.pt``..``G4.pt`` (translation generators: hematoxylin, DAPI,
Lap2, marker), ``G51.pt``..``G55.pt`` (segmentation generators for the IHC and the four
inferred modalities) and ``train_opt.txt`` (the training options, which name the fusion
weights ``seg_weights`` and the segmentation network ``net_gs``, e.g. ``unet_512``).

Those networks were traced with their batch-norm running statistics removed, so every
forward pass normalises with the statistics of the batch it is given: two tiles run
together give different results than each alone. :class:`OfficialDeepLIIF` therefore
runs each sample of a batch on its own, and its card says ``batch_independent=False`` so
the Predictor sends one tile at a time anyway.

TorchScript files are programs, not plain weights: load only folders you trust (the
released DeepLIIF models, or your own).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .deepliif_net import DEFAULT_SEG_WEIGHTS, fuse

TRANSLATORS = ("G1", "G2", "G3", "G4")
SEGMENTERS = ("G51", "G52", "G53", "G54", "G55")
OPTIONS_FILE = "train_opt.txt"
_DEFAULT_MARK = re.compile(r"\[default:[^\]]*\]")


def is_release_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder that looks like a DeepLIIF release (has any G*.pt or train_opt.txt)."""
    path = Path(path)
    return path.is_dir() and ((path / OPTIONS_FILE).exists() or any(path.glob("G*.pt")))


def parse_train_options(path: str | os.PathLike) -> dict[str, Any]:
    """The ``key: value`` lines of a DeepLIIF ``train_opt.txt`` as a dict.

    Values are read as Python literals where they are literals (numbers, lists, booleans)
    and kept as text otherwise; nothing is ever evaluated as code. ``[default: ...]``
    comments are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The DeepLIIF model folder {path.parent.name} has no {OPTIONS_FILE}; "
                              "it is needed for the segmentation fusion weights.")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{OPTIONS_FILE} in {path.parent.name} could not be read as text: {err}.") from err
    options: dict[str, Any] = {}
    for line in text.splitlines():
        if ":" not in line or line.lstrip().startswith("-"):
            continue
        key, value = line.split(":", 1)
        key, value = key.strip(), _DEFAULT_MARK.sub("", value).strip()
        if not key or " " in key:
            continue
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    if not options:
        raise CheckpointError(f"{OPTIONS_FILE} in {path.parent.name} does not parse: it has no 'name: value' "
                              "lines of DeepLIIF training options.")
    return options


def fusion_weights(options: dict[str, Any]) -> list[float]:
    """``seg_weights`` from the options, or DeepLIIF's defaults when the file predates them."""
    weights = options.get("seg_weights", DEFAULT_SEG_WEIGHTS)
    if isinstance(weights, str):
        try:
            weights = ast.literal_eval(weights.replace(" ", ",") if "," not in weights else weights)
        except (ValueError, SyntaxError):
            weights = None
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        values = []
    if len(values) != len(SEGMENTERS):
        raise CheckpointError(f"{OPTIONS_FILE} does not parse: seg_weights should be {len(SEGMENTERS)} numbers "
                              f"(one per segmentation network), not {options.get('seg_weights')!r}.")
    return values


def segmentation_size(options: dict[str, Any]) -> int:
    """The input multiple of the segmentation U-Nets, from ``net_gs`` (``unet_512`` -> 512)."""
    net = str(options.get("net_gs", options.get("netGS", "unet_512")))
    match = re.fullmatch(r"unet_(\d+)", net)
    if not match:
        raise CheckpointError(f"{OPTIONS_FILE} names the segmentation network {net!r}; only DeepLIIF's "
                              "unet_<size> networks are supported.")
    return int(match.group(1))


class OfficialDeepLIIF(nn.Module):
    """The nine released generators composed as DeepLIIF does, one sample at a time.

    Output (N, 15, H, W) in [-1, 1], the same layout as :class:`~.deepliif_net.DeepLIIFNet`.
    """

    def __init__(self, translators: list[nn.Module], segmenters: list[nn.Module], seg_weights: list[float],
                 size_multiple: int = 512):
        super().__init__()
        self.translators = nn.ModuleList(translators)
        self.segmenters = nn.ModuleList(segmenters)
        self.seg_weights = [float(w) for w in seg_weights]
        self.size_multiple = int(size_multiple)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        modalities = [g(x) for g in self.translators]
        segs = [self.segmenters[0](x)] + [g(m) for g, m in zip(self.segmenters[1:], modalities)]
        return torch.cat(modalities + [fuse(segs, self.seg_weights)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each sample alone: these networks normalise with the statistics of their batch.
        return torch.cat([self._one(x[i:i + 1]) for i in range(x.shape[0])], dim=0)


def _load_script(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError/... for junk
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path.name} in {path.parent.name} is not a readable TorchScript model: {first[:160]}") from err


def load_release_folder(folder: str | os.PathLike, overlap: int = 64):
    """Load a DeepLIIF release folder; returns ``(OfficialDeepLIIF, ModelCard)``."""
    from .deepliif_net import deepliif_card

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"There is no DeepLIIF model folder at {folder}.")
    missing = [f"{name}.pt" for name in TRANSLATORS + SEGMENTERS if not (folder / f"{name}.pt").is_file()]
    if missing:
        raise CheckpointError(f"The DeepLIIF model folder {folder.name} lacks {', '.join(missing)}: a release "
                              f"needs all nine networks (G1-G4 and G51-G55).")
    options = parse_train_options(folder / OPTIONS_FILE)
    weights = fusion_weights(options)
    size = segmentation_size(options)
    translators = [_load_script(folder / f"{name}.pt") for name in TRANSLATORS]
    segmenters = [_load_script(folder / f"{name}.pt") for name in SEGMENTERS]
    model = OfficialDeepLIIF(translators, segmenters, weights, size_multiple=size)
    args = {"seg_weights": weights, "seg_downs": size.bit_length() - 1}
    card = deepliif_card(
        folder.name, args, tile=size, overlap=min(overlap, size // 4), batch_independent=False,
        description=f"DeepLIIF release {folder.name} (TorchScript, per-tile batch statistics).",
        training={"source": str(folder), "train_opt": {k: options[k] for k in ("name", "model", "net_g", "net_gs",
                                                                                 "ngf", "norm") if k in options}},
    )
    card.architecture = "deepliif_official"
    model.eval()
    return model, card
