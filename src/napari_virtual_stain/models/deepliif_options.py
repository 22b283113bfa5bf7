"""``train_opt.txt`` of a DeepLIIF release folder, read the way deepliif 1.2.7 reads it for inference.

deepliif (``deepliif/options/__init__.py``, ``Options(..., mode='test')``) turns the file into
options and then patches them for folders written by older versions. We reproduce what
changes the result of an inference; nothing here evaluates code (values are Python
literals or kept as text).

What deepliif does and we do too:

- each ``key: value`` line is one option; a ``[default: ...]`` note after the value is dropped;
- ``net_g``/``netG``/``net_gs`` may be lists (deepliif 1.2.x) or single strings (older
  releases); ``net_gs`` absent means ``unet_512``;
- ``modalities_no`` absent but ``targets_no`` present (oldest releases): ``targets_no - 1``;
- a 4-modality DeepLIIF folder **without** ``modalities_names`` (models trained before that
  option, like the released DeepLIIF_Latest_Model) gets the names IHC, Hema, DAPI, Lap2,
  Marker and the fusion weights ``[0.5, 0, 0, 0, 0.5]``, whatever ``seg_weights`` says;
- ``seg_weights`` absent otherwise: ``[0.25, 0.15, 0.25, 0.1, 0.25]``;
- the segmentation networks are ``G<s><i>.pt`` where ``s`` (``mod_id_seg``) and the first
  ``i`` (``input_id``, 0 or 1) come from the option file or, as deepliif does, from the
  file names (``G51.pt``..``G55.pt`` -> s = 5, first i = 1).
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

OPTIONS_FILE = "train_opt.txt"
N_MODALITIES = 4  # hematoxylin, DAPI, Lap2, marker: what our DeepLIIF task shows and counts with
SUPPORTED_MODELS = ("DeepLIIF", "DeepLIIFKD")  # same files and fusion; KD = a distilled student
FORCED_NAMES = ["IHC", "Hema", "DAPI", "Lap2", "Marker"]
FORCED_SEG_WEIGHTS = [0.5, 0.0, 0.0, 0.0, 0.5]  # deepliif's choice for folders without modalities_names
DEEPLIIF_SEG_WEIGHTS = [0.25, 0.15, 0.25, 0.1, 0.25]  # deepliif's default when seg_weights is absent
DEFAULT_SEG_NET = "unet_512"
_DEFAULT_NOTE = re.compile(r"\[default[^\]]*\]")


def _literal(text: str) -> Any:
    """A Python literal if ``text`` is one, else the text. deepliif evaluates twice (once when reading,
    once when building its options), so a quoted literal inside a string is unwrapped as well."""
    value: Any = text
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            break
    return value


def read_options_file(path: str | os.PathLike) -> dict[str, Any]:
    """The ``key: value`` lines of a ``train_opt.txt`` as a dict of literals (or text)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The folder {path.parent.name} is not a DeepLIIF release: it has no {OPTIONS_FILE} "
                              f"(a release holds G1.pt..G4.pt, G51.pt..G55.pt and {OPTIONS_FILE}).")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{OPTIONS_FILE} in {path.parent.name} could not be read as text: {err}.") from err
    options: dict[str, Any] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        key = key.strip()
        if not key or " " in key or key.startswith("-"):
            continue
        options[key] = _literal(_DEFAULT_NOTE.sub("", value).strip())
    if not options:
        raise CheckpointError(f"{OPTIONS_FILE} in {path.parent.name} does not parse: it has no 'name: value' "
                              "lines of DeepLIIF training options.")
    return options


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def segmentation_size(options: dict[str, Any]) -> int:
    """The input multiple of the segmentation U-Nets, from ``net_gs`` (``unet_512`` -> 512).

    ``net_gs`` is a list in deepliif 1.2.x (one entry per segmentation network), a single
    string in older folders, and absent in the oldest (deepliif then uses ``unet_512``).
    """
    nets = [str(n).strip() for n in _as_list(options.get("net_gs", options.get("netGS", DEFAULT_SEG_NET)))]
    sizes = set()
    for net in nets:
        match = re.fullmatch(r"unet_(\d+)", net)
        if not match:
            raise CheckpointError(f"{OPTIONS_FILE} names the segmentation network {net!r}; only DeepLIIF's "
                                  "unet_<size> segmentation networks (e.g. unet_512) are supported.")
        sizes.add(int(match.group(1)))
    if not nets or len(sizes) != 1:
        raise CheckpointError(f"{OPTIONS_FILE} names segmentation networks of different sizes ({', '.join(nets)}); "
                              "only one U-Net size for all five is supported.")
    return sizes.pop()


def _weights(value: Any, n: int) -> list[float]:
    if isinstance(value, str):  # e.g. "0.25 0.15 0.25 0.1 0.25" written by hand
        value = _literal("[" + ",".join(value.replace(",", " ").split()) + "]")
    try:
        weights = [float(w) for w in _as_list(value)]
    except (TypeError, ValueError):
        weights = []
    if len(weights) != n:
        raise CheckpointError(f"{OPTIONS_FILE} does not parse: seg_weights should be {n} numbers "
                              f"(one per segmentation network), not {value!r}.")
    return weights


def _ids_from_files(folder: Path) -> tuple[str, int]:
    """deepliif's ``get_mod_id_seg``/``get_input_id`` on serialised folders: from the ``G*.pt`` names."""
    names = [p.name[1:-3] for p in folder.glob("G*.pt")]
    if not names and any(folder.glob("*_net_G*.pth")):
        raise CheckpointError(f"The folder {folder.name} holds deepliif training checkpoints (*_net_G*.pth), not "
                              f"serialised networks: run 'deepliif serialize --model-dir {folder} --output-dir "
                              "NEW_FOLDER' and load NEW_FOLDER.")
    if not names:
        raise CheckpointError(f"The folder {folder.name} is not a DeepLIIF release: it has no G*.pt networks.")
    longest = max(names, key=len)
    input_id = 0 if any(n[1:] == "0" for n in names if len(n) >= 2) else 1
    return longest[0], input_id


@dataclass(frozen=True)
class ReleaseOptions:
    """What an inference needs from a release folder's options, after deepliif's patches."""

    model: str
    modalities_names: list[str]
    seg_weights: list[float]
    seg_size: int
    translators: list[str]  # file stems, e.g. ["G1", "G2", "G3", "G4"]
    segmenters: list[str]  # file stems, the input image's first, e.g. ["G51", ..., "G55"]
    names_forced: bool  # True when deepliif forced the names and the 0.5/0.5 fusion (no modalities_names)
    raw: dict[str, Any]


def release_options(folder: str | os.PathLike) -> ReleaseOptions:
    """Read and check ``folder/train_opt.txt`` as deepliif 1.2.7 does in test mode."""
    folder = Path(folder)
    opt = read_options_file(folder / OPTIONS_FILE)
    model = str(opt.get("model", "DeepLIIF"))
    if model not in SUPPORTED_MODELS:
        what = {"DeepLIIFExt": "a DeepLIIFExt model (one segmentation per modality, no fused Seg)",
                "SDG": "an SDG model (no segmentation)", "CycleGAN": "a CycleGAN model (no segmentation)"}
        raise CheckpointError(f"{OPTIONS_FILE} in {folder.name} describes {what.get(model, f'a {model} model')}; "
                              "only DeepLIIF and DeepLIIFKD release folders are supported.")
    n = opt.get("modalities_no")
    if n is None and isinstance(opt.get("targets_no"), int):
        n = opt["targets_no"] - 1  # releases from before modalities_no
    n = N_MODALITIES if n is None else n
    if n != N_MODALITIES:
        raise CheckpointError(f"The DeepLIIF model in {folder.name} translates to {n} modalities; only models with "
                              "DeepLIIF's four (hematoxylin, DAPI, Lap2, marker) are supported.")
    if opt.get("seg_gen", True) is False:
        raise CheckpointError(f"The DeepLIIF model in {folder.name} was trained without segmentation (seg_gen False); "
                              "only models that segment cells are supported.")
    mod_id_seg, input_id = _ids_from_files(folder) if folder.is_dir() else ("5", 1)
    mod_id_seg = str(opt.get("mod_id_seg", mod_id_seg))
    names = opt.get("modalities_names")
    forced = not isinstance(names, (list, tuple)) or len(names) == 0
    if forced:
        names, weights = list(FORCED_NAMES), list(FORCED_SEG_WEIGHTS)
    else:
        names = [str(v) for v in names]
        if "seg_weights" not in opt and model != "DeepLIIF":  # deepliif's default then has 4 values for 5 nets
            raise CheckpointError(f"{OPTIONS_FILE} of the {model} model in {folder.name} has no seg_weights and "
                                  "deepliif has no default for it: add a line such as 'seg_weights: [0.25, 0.15, "
                                  "0.25, 0.1, 0.25]'.")
        weights = _weights(opt.get("seg_weights", DEEPLIIF_SEG_WEIGHTS), n + 1)
    return ReleaseOptions(
        model=model, modalities_names=names, seg_weights=weights, seg_size=segmentation_size(opt),
        translators=[f"G{i + 1}" for i in range(n)],
        segmenters=[f"G{mod_id_seg}{input_id + i}" for i in range(n + 1)],
        names_forced=forced, raw=opt)
