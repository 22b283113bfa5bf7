"""What the training-free QC says about one marker: its findings (class, sentence, evidence,
box) and the measures behind them, JSON-able."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass
class Finding:
    """One failure of one marker: its class, where (None: the whole channel) and the numbers behind it."""

    kind: str  # blank_region | dim_region | missing | noise | misregistered | saturated | imputation
    sentence: str
    evidence: dict[str, Any]
    box: tuple[int, int, int, int] | None = None  # y0, x0, y1, x1 in the stack's pixels (stop exclusive)

    def to_dict(self, offset: Sequence[int] = (0, 0)) -> dict[str, Any]:
        out = {"class": self.kind, "sentence": self.sentence, "evidence": _plain(self.evidence)}
        if self.box is not None:
            y0, x0, y1, x1 = self.box
            out["start"] = [y0 + int(offset[0]), x0 + int(offset[1])]
            out["stop"] = [y1 + int(offset[0]), x1 + int(offset[1])]
        return out


@dataclass
class MarkerChecks:
    marker: str
    assessable: bool
    findings: list[Finding] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    not_assessed: list[str] = field(default_factory=list)  # checks that could not judge it, with why


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return round(v, 4) if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _area_sentence(name: str, area: Mapping[str, Any]) -> str:
    e = area["evidence"]
    where = f"over {e['area_px']} px"
    against = f"{e['observed']:.0f} against {e['expected']:.0f} expected from {', '.join(e['predicted_from'][:3])} there; "
    if e.get("steady_elsewhere", True):
        against += f"elsewhere it never falls below {e['lowest_ratio_elsewhere']:.2f}x of its expected level"
    else:
        against += (f"the area ends in straight cuts across the tissue on {len(e['cut_sides'])} sides "
                    f"({', '.join(e['cut_sides'])}), as a failed tile or stripe does and a natural gap does not")
    if area["kind"] == "blank_region":
        return f"{name} is blank {where} ({against})"
    return f"{name} is dimmed {1 / max(e['worst_window_ratio'], 1e-3):.1f}-fold {where} ({against})"
