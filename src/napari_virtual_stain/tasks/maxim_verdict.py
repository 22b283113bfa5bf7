"""The imputation check's verdict on one marker: its scores against the two baselines of paper 003,
what its imputer reached on good held-out data, and the rule of ``tasks.maxim_qc``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import metrics
from ..models.card import ModelCard
from .maxim import raw_range
from .maxim_disagreement import Box, align_to, disagreement_regions
from .maxim_qc_settings import QCSettings
from .qc_report import _json_floats


@dataclass
class MarkerQC:
    marker: str
    scores: dict[str, float]  # ssim, pcc, mae of the imputation vs acquired
    bl_zero: dict[str, float]
    bl_mean: dict[str, float]
    margin: dict[str, float]  # model better than baseline by (SSIM up, MAE down) this much
    expected: dict[str, float]  # held-out pcc / mae of the imputer on good data
    brightness: float | None  # raw range relative to training, divided by the median marker's
    flagged: bool
    reasons: list[str]
    regions: list[Box]
    treated_missing: list[str]  # input markers zeroed when this verdict was reached
    assessable: bool = True
    disagreement: np.ndarray | None = field(default=None, repr=False)  # (Y, X) smoothed |acq - imp|
    imputed: np.ndarray | None = field(default=None, repr=False)
    severity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("disagreement")
        data.pop("imputed")
        data["regions"] = [{"start": [b.y0, b.x0], "stop": [b.y1, b.x1], "class": "imputation", "kind": b.kind,
                            "area": b.area, "mean_difference": b.mean_difference} for b in self.regions]
        return _json_floats(data)


def _expected(card: ModelCard, settings: QCSettings, missing: Sequence[str] = ()) -> dict[str, float]:
    """What the imputer scores on good held-out data, with ``missing`` inputs zeroed if any.

    Training stores leave-one-input-out scores (``scores["val_without"][marker]``); with
    several inputs missing the worst of their scores is used. Without them (older cards)
    the all-inputs scores are used.
    """
    held_out = card.scores.get("val", {}) if isinstance(card.scores, dict) else {}
    without = card.scores.get("val_without", {}) if isinstance(card.scores, dict) else {}
    pcc, mae, local = held_out.get("pcc"), held_out.get("mae"), held_out.get("local_error_p999")
    known = [without[m] for m in missing if isinstance(without.get(m), dict)]
    if known:
        locals_ = [k["local_error_p999"] for k in known if k.get("local_error_p999") is not None]
        local = max(locals_) if locals_ else local
        pccs = [k.get("pcc") for k in known if k.get("pcc") is not None and math.isfinite(k["pcc"])]
        maes = [k.get("mae") for k in known if k.get("mae") is not None and math.isfinite(k["mae"])]
        pcc = min(pccs) if pccs else pcc
        mae = max(maes) if maes else mae
    out = {"pcc": float(pcc) if pcc is not None and math.isfinite(pcc) else settings.default_expected_pcc,
           "mae": float(mae) if mae is not None and math.isfinite(mae) else settings.default_expected_mae}
    if local is not None and math.isfinite(local):
        out["local_error_p999"] = float(local)
    if isinstance(card.scores, dict) and "counts" in card.scores:  # the joint imputer's held-out verdict
        out["counts"] = bool(card.scores["counts"])
        base = card.scores.get("bl_mean", {}).get("mae")
        if base is not None and math.isfinite(base):
            out["bl_mean_mae"] = float(base)
    return out


def _scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {"ssim": metrics.ssim(pred, target), "pcc": metrics.pcc(pred, target), "mae": metrics.mae(pred, target)}


def judge_marker(marker: str, acquired_raw: np.ndarray, acquired: np.ndarray, imputed: np.ndarray,
                 mean_image: np.ndarray, expected: dict[str, float], brightness: float | None,
                 settings: QCSettings, offset: Sequence[int], treated_missing: Sequence[str]) -> MarkerQC:
    """Scores and verdict for one marker (see the module docstring for the rule)."""
    scores = _scores(imputed, acquired)
    zero = np.zeros_like(acquired)
    s_zero, s_mean = _scores(zero, acquired), _scores(mean_image, acquired)
    s_zero.pop("pcc")  # undefined for a constant image
    margin = {"ssim_vs_bl_zero": scores["ssim"] - s_zero["ssim"], "mae_vs_bl_zero": s_zero["mae"] - scores["mae"],
              "ssim_vs_bl_mean": scores["ssim"] - s_mean["ssim"], "mae_vs_bl_mean": s_mean["mae"] - scores["mae"]}
    reasons, severity = [], 0.0
    assessable = expected["pcc"] >= settings.min_expected_pcc and expected.get("counts", True)
    low, high = raw_range(acquired_raw)
    if high <= low and assessable:  # constant while an imputer that counts expects it: missing
        reasons.append(f"blank: the acquired {marker} channel is constant ({low:g})")
        severity = math.inf
    elif high <= low:
        pass  # constant, and no imputer that earns trust says it should be there: not assessable
    elif assessable:
        threshold = settings.pcc_ratio * expected["pcc"]
        pcc = scores["pcc"] if math.isfinite(scores["pcc"]) else 0.0
        if pcc < threshold:
            reasons.append(f"structure: acquired and imputed {marker} correlate at {pcc:.2f}, "
                           f"below {threshold:.2f} ({settings.pcc_ratio:g} x the {expected['pcc']:.2f} reached on good data)")
            severity = max(severity, 1.0 + (threshold - pcc) / max(threshold, 1e-6))
    threshold = max(settings.region_floor, settings.region_mae_factor * expected["mae"],
                    settings.region_local_factor * expected.get("local_error_p999", 0.0))
    disagreement, boxes = disagreement_regions(align_to(acquired, imputed), imputed, threshold, settings.smooth_sigma,
                                               settings.min_region_area, offset)
    blank = math.isinf(severity)
    if not assessable and not blank:
        boxes = []  # its imputation is too poor to say where the stain is wrong
    elif boxes and not blank:
        covered = sum(b.area for b in boxes)
        reasons.append(f"regions: {len(boxes)} area(s), {covered} pixels, where acquired and imputed {marker} "
                       f"differ by more than {threshold:.2f}")
        peak = max(float(disagreement[b.y0 - offset[0]:b.y1 - offset[0], b.x0 - offset[1]:b.x1 - offset[1]].max())
                   for b in boxes)
        severity = max(severity, peak / threshold)
    if not assessable and not reasons:
        against = (f" and MAE {expected['mae']:.3f} against {expected['bl_mean_mae']:.3f} for the mean of the other "
                   "markers" if "bl_mean_mae" in expected else "")
        reasons.append(f"not assessable: its imputer reached only PCC {expected['pcc']:.2f}{against} on held-out "
                       "good data; the training-free checks still judge it")
    flagged = any(not r.startswith("not assessable") for r in reasons)
    return MarkerQC(marker, scores, s_zero, s_mean, margin, expected, brightness, flagged, reasons,
                    boxes if flagged else [], list(treated_missing), assessable, disagreement, imputed, severity)
