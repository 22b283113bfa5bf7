"""The imputation check's settings (see ``tasks.maxim_qc`` for the rule they tune)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QCSettings:
    pcc_ratio: float = 0.6
    min_expected_pcc: float = 0.3
    brightness_factor: float = 2.0
    smooth_sigma: float = 3.0
    region_floor: float = 0.2
    region_mae_factor: float = 4.0
    # ... and this factor times the 99.9th percentile of the same smoothed map on good
    # held-out data (card.scores["val"]["local_error_p999"], stored by training).
    region_local_factor: float = 1.25
    # A failed area spans more than a few cells: one cell the imputer could not predict
    # (a Ki67-positive nucleus, say) is biology, not a failed stain.
    min_region_area: int = 256
    # Used when a card carries no held-out scores (a model trained elsewhere).
    default_expected_pcc: float = 0.8
    default_expected_mae: float = 0.05
