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

The translators (``G1``..``G4``, ResNet-9blocks) run as eager rebuilds of their recordings
when those are understood and agree on a probe (:mod:`.traced_rebuild`), with NNPACK's
convolutions: 1.6-2.0x faster on a CPU, under 0.01 of an 8-bit level from the recording before
rounding (bench/bench_traced_rebuild.py).

Two shortcuts deepliif's own inference takes are taken here too, with the same answers:
a tile without tissue (deepliif's ``is_empty``: the grey levels, pure black and white left
out, vary by less than 9) is not run through the networks but filled with deepliif's
background colours and an empty segmentation; and a segmentation network whose fusion
weight is 0 (the released model fuses only the IHC and marker segmentations) is not run.

TorchScript files are programs, not plain weights: load only folders you trust (the
released DeepLIIF models, or your own).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..engine.device import AUTO_PRECISION
from ..errors import CheckpointError
from .deepliif_net import fuse
from .deepliif_options import OPTIONS_FILE, read_options_file, release_options
from .traced_rebuild import rebuild_traced

parse_train_options = read_options_file  # the name earlier code and tests use


def is_release_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder that looks like a DeepLIIF release (has any G*.pt or train_opt.txt)."""
    path = Path(path)
    return path.is_dir() and ((path / OPTIONS_FILE).exists() or any(path.glob("G*.pt")))


# deepliif.models.is_empty: below this variance of a tile's grey levels there is no tissue.
EMPTY_TILE_VARIANCE = 9.0
# deepliif's ``background_colors`` for DeepLIIF models (hematoxylin, DAPI, Lap2, marker), 8-bit RGB.
BACKGROUND_COLOURS = ((201, 211, 208), (10, 10, 10), (0, 0, 0), (10, 10, 10))


def is_empty_tile(x: torch.Tensor) -> bool:
    """deepliif's empty-tile rule on one tile (1, 3, H, W) normalised to [-1, 1] from 8-bit RGB.

    deepliif converts the tile to PIL's "L" grey levels, drops pure black and pure white
    pixels, and calls the tile empty when the rest has a (population) variance under 9.
    """
    rgb = torch.round((x[0, :3].float() + 1) * 127.5).clamp_(0, 255).to(torch.int64)
    grey = (rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16  # PIL's integer ITU-R 601 luma
    values = grey[(grey != 0) & (grey != 255)].double()
    return values.numel() == 0 or float(values.var(unbiased=False)) < EMPTY_TILE_VARIANCE


def background_colours(raw_options: dict) -> tuple[tuple[int, int, int], ...]:
    """The background colours a release's options name (``background_colors``), else deepliif's defaults."""
    given = raw_options.get("background_colors")
    try:
        colours = tuple(tuple(int(v) for v in c) for c in given)
        if len(colours) == len(BACKGROUND_COLOURS) and all(len(c) == 3 for c in colours):
            return colours
    except (TypeError, ValueError):
        pass
    return BACKGROUND_COLOURS


class OfficialDeepLIIF(nn.Module):
    """The nine released generators composed as DeepLIIF does, one sample at a time.

    Output (N, 15, H, W) in [-1, 1], the same layout as :class:`~.deepliif_net.DeepLIIFNet`.
    """

    # The Predictor keeps this layout for the weights and tiles instead of channels_last: NNPACK
    # (the rebuilt translators' wide convolutions) reads NCHW, and converting the nine full-size
    # networks' weights took 1.5-1.9 s at load (AVX2 EPYC); the tiles themselves ran as fast in
    # either layout (4 tiles: 37.9 vs 37.4 s), with outputs within 1 level.
    memory_format = torch.contiguous_format

    def __init__(self, translators: list[nn.Module], segmenters: list[nn.Module], seg_weights: list[float],
                 size_multiple: int = 512, background: tuple = BACKGROUND_COLOURS, skip_empty: bool = True):
        super().__init__()
        self.translators = nn.ModuleList(translators)
        self.segmenters = nn.ModuleList(segmenters)
        self.seg_weights = [float(w) for w in seg_weights]
        self.size_multiple = int(size_multiple)
        self.skip_empty = bool(skip_empty)
        # +0.5: the outputs are written as uint8 by truncation, so the colour must land inside its level.
        levels = torch.tensor([c for colour in background for c in colour], dtype=torch.float32)
        self.register_buffer("background", ((levels + 0.5) / 127.5 - 1).view(1, -1, 1, 1), persistent=False)

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        modalities = self.background.to(x.device).expand(n, -1, h, w)
        return torch.cat([modalities, torch.full((n, 3, h, w), -1.0, device=x.device)], dim=1)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip_empty and is_empty_tile(x):
            return self._empty(x)
        modalities = [g(x) for g in self.translators]
        inputs = [x] + modalities
        # Only the segmentations the fusion uses, as deepliif does (a weight of 0 adds nothing).
        used = [i for i, w in enumerate(self.seg_weights) if w != 0]
        if not used:  # all weights 0: the fused map is 0 everywhere
            return torch.cat(modalities + [torch.zeros_like(modalities[0])], dim=1)
        segs = [self.segmenters[i](inputs[i]) for i in used]
        return torch.cat(modalities + [fuse(segs, [self.seg_weights[i] for i in used])], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each sample alone: these networks normalise with the statistics of their batch.
        try:
            return torch.cat([self._one(x[i:i + 1]) for i in range(x.shape[0])], dim=0)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:  # a G*.pt from another model: wrong channels or sizes between networks
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            raise CheckpointError(f"The networks of this DeepLIIF release do not fit together on a "
                                  f"{x.shape[-1]} x {x.shape[-2]} tile ({first[:160]}): a G*.pt file is from "
                                  "another model.") from err


def _load_script(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError/... for junk
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path.name} in {path.parent.name} is not a readable TorchScript model: {first[:160]}") from err


def release_card(folder: str | os.PathLike, overlap: int = 64):
    """The card of a DeepLIIF release folder, from its option file and file names alone (no
    network is read): a wrong or incomplete folder is refused here, at once."""
    from .deepliif_net import deepliif_card

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"There is no DeepLIIF model folder at {folder}.")
    opts = release_options(folder)
    missing = [f"{name}.pt" for name in opts.translators + opts.segmenters if not (folder / f"{name}.pt").is_file()]
    if missing:
        raise CheckpointError(f"The DeepLIIF model folder {folder.name} lacks {', '.join(missing)}: a release "
                              f"needs all nine networks ({', '.join(n + '.pt' for n in opts.translators)} and "
                              f"{', '.join(n + '.pt' for n in opts.segmenters)}).")
    size = opts.seg_size
    args = {"seg_weights": opts.seg_weights, "seg_downs": size.bit_length() - 1}
    keep = ("name", "model", "net_g", "netG", "net_gs", "ngf", "norm", "modalities_no", "seg_weights")
    card = deepliif_card(
        folder.name, args, tile=size, overlap=min(overlap, size // 4), batch_independent=False,
        description=f"DeepLIIF release {folder.name} (TorchScript, per-tile batch statistics).",
        training={"source": str(folder), "train_opt": {k: opts.raw[k] for k in keep if k in opts.raw}},
    )
    card.architecture = "deepliif_official"
    # deepliif renders its outputs as uint8((y + 1) / 2 * 255), truncating: we do the same for its
    # models so Seg values (and so which pixels pass the segmentation threshold) are deepliif's.
    card.extra.update({AUTO_PRECISION: "fp32", "to_uint8": "truncate", "modalities_names": opts.modalities_names,
                       "names_forced": opts.names_forced, "deepliif_model": opts.model})
    return card


def load_release_folder(folder: str | os.PathLike, overlap: int = 64, rebuild: bool = True):
    """Load a DeepLIIF release folder; returns ``(OfficialDeepLIIF, ModelCard)``.

    Every check that needs only the option file and the file names runs before any
    network is read, so a wrong folder is refused at once. With ``rebuild`` the four
    translators run as eager rebuilds of their recordings (:mod:`.traced_rebuild`: faster
    convolutions, checked against the recording on a probe; a translator that cannot be
    rebuilt runs as recorded).
    """
    folder = Path(folder).expanduser()
    card = release_card(folder, overlap)  # every check that needs no network, first
    opts = release_options(folder)
    translators = [_load_script(folder / f"{name}.pt") for name in opts.translators]
    if rebuild:
        translators = [rebuild_traced(net) or net for net in translators]
    segmenters = [_load_script(folder / f"{name}.pt") for name in opts.segmenters]
    model = OfficialDeepLIIF(translators, segmenters, opts.seg_weights, size_multiple=opts.seg_size,
                             background=background_colours(opts.raw))
    model.eval()
    return model, card
