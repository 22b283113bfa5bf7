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

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .deepliif_net import fuse
from .deepliif_options import OPTIONS_FILE, read_options_file, release_options

parse_train_options = read_options_file  # the name earlier code and tests use


def is_release_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder that looks like a DeepLIIF release (has any G*.pt or train_opt.txt)."""
    path = Path(path)
    return path.is_dir() and ((path / OPTIONS_FILE).exists() or any(path.glob("G*.pt")))


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
    card.extra.update({"to_uint8": "truncate", "modalities_names": opts.modalities_names,
                       "names_forced": opts.names_forced, "deepliif_model": opts.model})
    return card


def load_release_folder(folder: str | os.PathLike, overlap: int = 64):
    """Load a DeepLIIF release folder; returns ``(OfficialDeepLIIF, ModelCard)``.

    Every check that needs only the option file and the file names runs before any
    network is read, so a wrong folder is refused at once.
    """
    folder = Path(folder).expanduser()
    card = release_card(folder, overlap)  # every check that needs no network, first
    opts = release_options(folder)
    translators = [_load_script(folder / f"{name}.pt") for name in opts.translators]
    segmenters = [_load_script(folder / f"{name}.pt") for name in opts.segmenters]
    model = OfficialDeepLIIF(translators, segmenters, opts.seg_weights, size_multiple=opts.seg_size)
    model.eval()
    return model, card
