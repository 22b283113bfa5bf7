"""MAXIM marker imputation (paper 003): one marker of a multiplex stack from the others.

A multiplex stack is a channels-first array ``(C, Y, X)`` whose channels are markers with
unique names. One imputer model exists per target marker; its card names the input
markers (``input_channels``, in the order the network takes them) and the target
(``output_channels[0]``). Imputation picks those inputs from the stack by name, so the
stack's channel order does not matter, and runs the same Predictor as every other task.

Markers that are known to be bad can be passed as ``missing``: they are fed as zeros,
which is what the imputers see for a dropped channel during training
(``training.imputers`` drops input markers at random), so one failed stain does not
poison the imputation of the others. This is what the QC uses to judge each marker
without the influence of the markers already found to be failed.

Intensities for comparison live in one unit: each acquired marker is mapped to [0, 1]
with its own 1st/99.8th percentiles (clipped), exactly as training targets are
(``training.datasets.TARGET_NORMALISATION``), and the imputers' sigmoid output is in
that unit too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..engine.normalise import compute_stats, normalise
from ..engine.predictor import Predictor
from ..engine.predictor_cache import SHARED, file_stamp, remember_source
from ..errors import CheckpointError, InputError
from ..models.card import ModelCard
from .region import Region

# The unit in which acquired and imputed markers are compared (= training targets).
COMPARISON_NORMALISATION = {"kind": "percentile", "low": 1.0, "high": 99.8, "clip": True}


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + ("..." if len(names) > limit else "")


def check_marker_names(names: Sequence[str], n_channels: int) -> list[str]:
    """Validate marker names for a stack of ``n_channels``; return them as a list of str."""
    names = [str(n).strip() for n in names]
    if len(names) != n_channels:
        raise InputError(f"{len(names)} marker names were given for a stack of {n_channels} channels; "
                         "give exactly one name per channel.")
    if any(not n for n in names):
        raise InputError("A marker has an empty name; every channel needs a name (DAPI, Ki67, ...).")
    first: dict[str, int] = {}
    duplicates = []
    for i, n in enumerate(names):
        j = first.setdefault(n.lower(), i)
        if j != i and names[j] not in duplicates:
            duplicates.append(names[j])
    if duplicates:
        raise InputError(f"The marker name(s) {_short_list(duplicates)} appear more than once; "
                         "each channel needs its own name so the models can find their inputs.")
    return names


def check_marker_stack(stack, names: Sequence[str]) -> list[str]:
    """Reject stacks that cannot be imputed from: wrong axes, a single channel, bad names or dtype."""
    shape = tuple(int(s) for s in getattr(stack, "shape", ()))
    if len(shape) == 4:
        raise InputError(f"The stack has shape {'x'.join(map(str, shape))} (markers, Z, Y, X); "
                         "marker imputation works on 2D multiplex images: choose one plane.")
    if len(shape) != 3:
        raise InputError(f"A multiplex stack needs the axes (markers, Y, X), but the data has shape {shape}.")
    if shape[0] < 2:
        raise InputError("The stack has a single channel: imputing a marker needs at least one other marker "
                         "to impute it from.")
    if min(shape[1:]) < 1:
        raise InputError("The stack is empty.")
    kind = np.dtype(stack.dtype).kind
    if kind not in "uifb":
        raise InputError(f"The stack holds {stack.dtype} values; marker images must be numbers.")
    return check_marker_names(names, shape[0])


def check_channels(channels: Sequence, names: Sequence[str]) -> list[str]:
    """Check one 2D image per marker from their shapes and dtypes alone (nothing is read):
    the names as a list of str, or an InputError sentence.

    All markers must share shape and dtype: markers of one acquisition do. Different
    dtypes mean the layers come from different files or conversions, whose pixels are
    usually not registered to each other, so this is refused with a sentence instead of
    being guessed around.
    """
    names = [str(n) for n in names]
    if len(channels) != len(names):
        raise InputError(f"{len(channels)} marker images were given with {len(names)} names.")
    if len(channels) < 2:
        raise InputError("Only one marker was chosen: imputing a marker needs at least one other marker "
                         "to impute it from.")
    shapes = [tuple(int(s) for s in np.shape(c)) for c in channels]
    for shape, n in zip(shapes, names):
        if len(shape) != 2:
            raise InputError(f"The marker '{n}' has shape {'x'.join(map(str, shape))}; "
                             "each marker must be a single 2D image (Y, X).")
    if len(set(shapes)) > 1:
        described = "; ".join(f"{n} {s[0]}x{s[1]}" for n, s in zip(names, shapes))
        raise InputError(f"The markers differ in size ({described}): all markers must come from the same "
                         "co-registered acquisition.")
    dtypes = [np.dtype(c.dtype if hasattr(c, "dtype") else np.asarray(c).dtype) for c in channels]
    if len(set(dtypes)) > 1:
        described = "; ".join(f"{n} {d}" for n, d in zip(names, dtypes))
        raise InputError(f"The markers have different pixel types ({described}): markers of one acquisition "
                         "share one type; convert them together or choose markers from the same file.")
    return check_marker_names(names, len(channels))


def stack_from_channels(channels: Sequence, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """One (C, Y, X) stack from one 2D array per marker (e.g. one napari layer per marker),
    checked by :func:`check_channels` before anything is read."""
    names = check_channels(channels, names)
    return np.stack([np.asarray(c) for c in channels]), names


def normalise_marker(channel) -> np.ndarray:
    """An acquired marker in the comparison unit: own 1st/99.8th percentiles -> [0, 1], clipped."""
    block = np.asarray(channel)[None]
    stats = compute_stats(block, COMPARISON_NORMALISATION)
    return normalise(block, COMPARISON_NORMALISATION, stats)[0]


def raw_range(channel) -> tuple[float, float]:
    """The 1st and 99.8th percentiles of a raw marker (finite values), for brightness checks."""
    stats = compute_stats(np.asarray(channel)[None], COMPARISON_NORMALISATION)
    return float(stats["low"][0]), float(stats["high"][0])


# ---- models -------------------------------------------------------------------------


def imputer_target(card: ModelCard) -> str:
    if card.task != "impute" or card.n_out != 1:
        raise CheckpointError(f"The model '{card.name}' is not a marker imputer (task {card.task!r}, "
                              f"{card.n_out} output channels); choose a model trained to impute one marker.")
    return card.output_channels[0]


def check_model_fits(card: ModelCard, names: Sequence[str]) -> None:
    """Say in one sentence if the stack lacks a marker the model needs."""
    target = imputer_target(card)
    have = {n.lower() for n in names}
    lacking = [m for m in card.input_channels if m.lower() not in have]
    if lacking:
        raise CheckpointError(
            f"The imputer for {target} needs the markers {_short_list(card.input_channels)}, but the stack has no "
            f"{_short_list(lacking)} (its markers: {_short_list(names)}); rename the channels or use a model "
            "trained on this panel.")
    if card.spatial_dims != 2:
        raise CheckpointError(f"The model '{card.name}' is a 3D model; marker imputers are 2D.")


def find_imputers(model_dir: str | os.PathLike, problems: list[str] | None = None) -> dict[str, Path]:
    """``{target marker: checkpoint path}`` for every imputer in ``model_dir``.

    A folder holds either the joint imputer (``joint-imputer.pt``, every marker of its panel:
    each marker maps to that one file) or the older one-file-per-marker imputers. Files that
    cannot be read are skipped (a stray file must not hide the good models beside it), and
    each is reported in ``problems`` (one sentence per file) when a list is given: the
    caller tells the user which imputer is missing from the run and why.
    """
    from ..models.checkpoint import read_checkpoint
    from .maxim_joint import JOINT_FILE, is_joint

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"There is no model folder at {model_dir}.")
    found: dict[str, Path] = {}
    unreadable: list[str] = []
    joint: dict[str, Path] = {}
    for path in sorted(model_dir.glob("*.pt")):
        if path.name.endswith(".state.pt"):
            continue  # a trainer's resume state, not a model
        try:
            card, _ = read_checkpoint(path)
        except CheckpointError as err:
            unreadable.append(str(err))
            continue
        if card.task != "impute":
            continue
        if is_joint(card):
            joint = {m: path for m in card.output_channels}
            continue
        target = imputer_target(card)
        if target in found:
            raise CheckpointError(f"{model_dir} holds two imputers for {target} ({found[target].name} and "
                                  f"{path.name}); keep one per marker.")
        found[target] = path
    if joint:
        if found:
            unreadable.append(f"{model_dir} holds the joint imputer {JOINT_FILE} and per-marker imputers "
                              f"({', '.join(p.name for p in found.values())}); only the joint imputer is used")
        found = joint
    if problems is not None:
        problems.extend(f"skipped {message}" if not message.endswith("is used") else message for message in unreadable)
    if not found:
        detail = f" ({len(unreadable)} unreadable file(s), e.g. {unreadable[0]})" if unreadable else ""
        raise CheckpointError(f"{model_dir} holds no marker imputers{detail}; train them first (train-imputers).")
    return found


def _load(paths: Mapping[str, Path]) -> dict[str, tuple]:
    """``{marker: (model, card)}``; a joint file is loaded once and seen as one view per marker.

    Each model is tagged with its file, so its Predictor comes from the docks' shared cache
    (:func:`imputer_predictor`)."""
    from ..models.checkpoint import load_checkpoint
    from .maxim_joint import is_joint, joint_views

    out: dict[str, tuple] = {}
    loaded: dict[Path, tuple] = {}
    for marker, path in paths.items():
        if path not in loaded:
            stamp = file_stamp(Path(path).resolve())  # before reading: a file written meanwhile is not mistaken for it
            loaded[path] = (*load_checkpoint(path), stamp)
        model, card, stamp = loaded[path]
        if is_joint(card):
            view, view_card = joint_views(model, card, [marker])[marker]
            out[marker] = (remember_source(view, path, marker, stamp), view_card)
        else:
            out[marker] = (remember_source(model, path, "", stamp), card)
    return out


def load_imputers(model_dir: str | os.PathLike, problems: list[str] | None = None) -> dict[str, tuple]:
    """``{target marker: (model, card)}`` for every imputer in ``model_dir`` (see find_imputers)."""
    return _load(find_imputers(model_dir, problems))


def load_imputer(model_dir: str | os.PathLike, marker: str, problems: list[str] | None = None) -> tuple:
    """``(model, card)`` of the imputer of ``marker`` alone (a one-marker action loads one network)."""
    found = find_imputers(model_dir, problems)
    lowered = {m.lower(): m for m in found}
    if marker.lower() not in lowered:
        raise InputError(f"{model_dir} has no imputer for {marker} (it has: {', '.join(found)}).")
    key = lowered[marker.lower()]
    return _load({key: found[key]})[key]


# ---- imputation ---------------------------------------------------------------------


def channel_index(names: Sequence[str], marker: str) -> int:
    lowered = [n.lower() for n in names]
    if marker.lower() not in lowered:
        raise InputError(f"The stack has no marker {marker!r} (its markers: {_short_list(names)}).")
    return lowered.index(marker.lower())


def model_inputs(stack, names: Sequence[str], card: ModelCard, region: Region,
                 missing: Sequence[str] = ()) -> np.ndarray:
    """The model's input markers for ``region`` in card order, ``missing`` ones as zeros."""
    missing_lower = {m.lower() for m in missing}
    planes = []
    for marker in card.input_channels:
        if marker.lower() in missing_lower:
            planes.append(np.zeros(region.shape, dtype=np.float32))
        else:
            planes.append(np.asarray(stack[(channel_index(names, marker),) + region.slices], dtype=np.float32))
    return np.stack(planes)


@dataclass
class ImputeResult:
    data: np.ndarray  # (Y, X) float32 over ``region``, in the comparison unit ([0, 1])
    target: str
    region: Region
    missing: list[str]


def imputer_predictor(model, card: ModelCard, device: str = "auto") -> Predictor:
    """The Predictor of an imputer: the shared cache's for one read from a file (loaded once
    per file version, device and precision, released with the docks' models), a new one for a
    model that lives in memory (being trained)."""
    return SHARED.for_module(model, card, device=device)


def impute_marker(model, card: ModelCard, stack, names: Sequence[str], *, region: Region | None = None,
                  missing: Sequence[str] = (), predictor: Predictor | None = None, device: str = "auto",
                  progress: Callable[[int, int], None] | None = None, cancel=None) -> ImputeResult:
    """Impute ``card``'s target marker over ``region`` of a (C, Y, X) stack (all of it by default).

    The region is read with a margin of context (the model's tile overlap) so a view's
    border is imputed as in a whole-image run. ``missing`` input markers are zeroed.
    """
    names = check_marker_stack(stack, names)
    check_model_fits(card, names)
    for marker in missing:
        channel_index(names, marker)  # a typo in a failed marker's name must not pass unnoticed
    target = imputer_target(card)
    spatial = tuple(int(s) for s in stack.shape[1:])
    region = region or Region.whole(spatial)
    outer = region.grow(tuple(int(o) for o in card.overlap), spatial)
    block = model_inputs(stack, names, card, outer, missing)
    predictor = predictor or imputer_predictor(model, card, device)
    out = predictor.predict(block, progress=progress, cancel=cancel)
    inner = np.ascontiguousarray(out[0][region.relative_to(outer)], dtype=np.float32)
    return ImputeResult(inner, target, region, list(missing))


def bl_mean(stack, names: Sequence[str], card: ModelCard, region: Region | None = None,
            missing: Sequence[str] = ()) -> np.ndarray:
    """Paper 003's BL-Mean baseline: the mean of the model's input markers in the comparison unit.

    Markers treated as ``missing`` are left out of the mean (they would only pull it to 0).
    """
    spatial = tuple(int(s) for s in stack.shape[1:])
    region = region or Region.whole(spatial)
    missing_lower = {m.lower() for m in missing}
    used = [m for m in card.input_channels if m.lower() not in missing_lower]
    if not used:
        return np.zeros(region.shape, dtype=np.float32)
    total = np.zeros(region.shape, dtype=np.float32)
    for marker in used:
        total += normalise_marker(stack[channel_index(names, marker)])[region.slices]
    return total / np.float32(len(used))


def stack_marker_stats(stack, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Raw 1st/99.8th percentiles per marker, stored in imputer cards as the brightness reference."""
    return {name: dict(zip(("low", "high"), raw_range(stack[i]))) for i, name in enumerate(names)}


def select_markers(requested: Sequence[str] | None, available: Sequence[str],
                   what: str = "markers") -> list[str]:
    """The markers named in ``requested`` (all of ``available`` when None), in stack spelling."""
    if not requested:
        return list(available)
    out = []
    for marker in requested:
        out.append(available[channel_index(available, marker)])
    if len(set(out)) != len(out):
        raise InputError(f"The {what} list names a marker twice ({_short_list(requested)}).")
    return out


def stats_from_cards(cards: Mapping[str, ModelCard]) -> dict[str, dict[str, float]]:
    """The training brightness reference (raw percentiles per marker) from any imputer card."""
    for card in cards.values():
        stats = card.extra.get("marker_stats")
        if isinstance(stats, dict) and stats:
            return {str(k): {"low": float(v["low"]), "high": float(v["high"])} for k, v in stats.items()}
    return {}
