"""The joint MAXIM imputer at use: one network that imputes any marker of its panel from the others.

``training.joint_imputer`` trains it (one ``joint-imputer.pt`` per folder). Here it is run
and turned into one *view* per marker, ``(JointTarget, card)``, that looks exactly like a
per-marker imputer to the rest of MAXIM (impute, QC, attribution, cell scores): its card
names the other markers as inputs and the marker as output, its held-out scores are the
joint network's for that marker, and the Predictor runs it like any model. The view hides
its marker, and every input that is all zeros in a tile: a marker fed as zeros because it
failed (the QC's ``missing``) is hidden, as the network saw hidden markers in training.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..engine.predictor_cache import SHARED
from ..models.card import ModelCard

JOINT_FILE = "joint-imputer.pt"
COMPARISON = {"kind": "percentile", "low": 1.0, "high": 99.8, "clip": True}  # = tasks.maxim's comparison unit


def is_joint(card: ModelCard) -> bool:
    return card.task == "impute" and bool(card.extra.get("joint"))


def signal_fractions(stack, names: Sequence[str]) -> dict[str, float]:
    """Per marker, the share of pixels above its background (1st percentile): how much of it there is."""
    out = {}
    for name, channel in zip(names, np.asarray(stack)):
        c = np.asarray(channel, dtype=np.float32)
        out[str(name)] = float((c > np.percentile(c, 1.0)).mean())
    return out


def joint_inputs(normalised: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """(2C, Y, X): the markers with hidden ones zeroed, then the mask planes (1 = hidden)."""
    h = hidden.astype(np.float32)[:, None, None]
    return np.concatenate([normalised * (1 - h), np.broadcast_to(h, normalised.shape)]).astype(np.float32)


def joint_forward(model, card: ModelCard, normalised: np.ndarray, hidden: np.ndarray, device: str = "auto",
                  cancel=None) -> np.ndarray:
    """All C markers imputed over ``normalised`` (C, Y, X, comparison unit) with ``hidden`` (C,) hidden
    (and every marker that is all zeros there, as in training)."""
    hidden = np.asarray(hidden, bool) | (normalised.reshape(len(normalised), -1).max(axis=1) <= 0)
    return SHARED.for_module(model, card, device=device).predict(joint_inputs(normalised, hidden), cancel=cancel)


class JointTarget(torch.nn.Module):
    """The joint network seen as an imputer of marker ``target`` from the other markers (card order)."""

    def __init__(self, net: torch.nn.Module, target: int, n_markers: int):
        super().__init__()
        self.net, self.target, self.n_markers = net, int(target), int(n_markers)
        self.size_multiple = getattr(net, "size_multiple", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.target
        b, _, hh, ww = x.shape
        zeros = torch.zeros((b, 1, hh, ww), dtype=x.dtype, device=x.device)
        full = torch.cat([x[:, :t], zeros, x[:, t:]], dim=1)
        hidden = (full.flatten(2).amax(dim=2) <= 0).to(x.dtype)  # all-zero inputs (failed, absent) are hidden
        hidden[:, t] = 1
        mask = hidden[:, :, None, None].expand(b, self.n_markers, hh, ww)
        return self.net(torch.cat([full * (1 - mask), mask], dim=1))[:, t:t + 1]


def marker_card(card: ModelCard, marker: str) -> ModelCard:
    """The card of the joint imputer's view for ``marker``: the other markers in, ``marker`` out."""
    names = list(card.output_channels)
    k = names.index(marker)
    view = copy.deepcopy(card)
    view.name = f"maxim-joint:{marker}"
    view.input_channels = names[:k] + names[k + 1:]
    view.output_channels = [marker]
    view.input_normalisation = dict(COMPARISON)
    per = card.scores.get("per_marker", {}).get(marker, {})
    mine, base = per.get("imputer", {}), per.get("bl_mean", {})
    view.scores = {"val": dict(mine), "bl_mean": dict(base), "counts": bool(per.get("counts", False)),
                   "heldout_region": card.scores.get("heldout_region")}
    view.extra = dict(card.extra, joint_of=names)
    return view


def joint_views(model, card: ModelCard, markers: Sequence[str] | None = None) -> dict[str, tuple]:
    """``{marker: (JointTarget, its card)}`` for ``markers`` (default: every marker of the panel)."""
    names = list(card.output_channels)
    wanted = names if markers is None else [n for n in names if n.lower() in {m.lower() for m in markers}]
    return {m: (JointTarget(model, names.index(m), len(names)), marker_card(card, m)) for m in wanted}


def find_joint(model_dir) -> Path | None:
    path = Path(model_dir) / JOINT_FILE
    return path if path.is_file() else None
