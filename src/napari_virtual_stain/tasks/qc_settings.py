"""The training-free QC's settings: its defaults, the calibrated thresholds file, and which
channels are marker stains at all."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .qc_regions import REGION_DEFAULTS

THRESHOLDS_FILE = Path(__file__).with_name("qc_thresholds.json")

# Channels that are not stains of a marker: MIBI's elemental, mass-calibration and
# background channels, and derived composites. They are not judged, nor used as tissue.
NOT_MARKERS = {"background", "bg", "au", "na", "c", "ca", "fe", "p", "si", "ta", "empty", "noodle",
               "membrane", "nuc", "bckg", "gold", "130", "131"}

DEFAULTS: dict[str, float] = {
    "background_percentile": 1.0,
    "min_signal_px": 400,  # signal pixels needed before a marker can be judged at all
    "rate_sigma": 5.0,  # px: the neighbourhood of a local rate (about a cell)
    "tissue_sigma": 12.0,
    "tissue_fraction_of_p75": 0.25,  # tissue = other markers above this share of their 75th percentile
    "structure_sigma": 2.0,
    "min_structure": 1.25,  # smoothed variance / shuffled smoothed variance
    "missing_spread": 2.0,  # no structure and the 0.1-99.9th percentiles this close: background only
    "missing_floor_ratio": 0.25,  # an empty channel: signal pixels below this share of the emptiest other marker's
    "shift_band": [1.5, 8.0],
    "max_shift": 25,
    "min_shift": 3,
    "shift_partners": 8,  # the markers with most signal, each marker is registered against
    "min_shift_peak": 0.2,  # cell-scale correlation with the best partner at the shift found
    "min_shift_peak_alone": 0.35,  # ... when the second-best partner does not confirm the shift
    "min_shift_gain": 0.1,  # ... above its correlation without shift
    "max_zero_share": 0.5,  # ... which is at most this share of the peak (the cells no longer overlap)
    "saturation_fraction": 0.01,
    **REGION_DEFAULTS,
}


@lru_cache(maxsize=1)
def _calibrated() -> dict[str, Any]:
    if THRESHOLDS_FILE.exists():
        return json.loads(THRESHOLDS_FILE.read_text())
    return {}


def thresholds(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The defaults, updated by the calibrated file, updated by ``overrides``."""
    out = dict(DEFAULTS)
    out.update(_calibrated().get("thresholds", {}))
    out.update(overrides or {})
    return out


def is_marker(name: str) -> bool:
    return str(name).strip().lower() not in NOT_MARKERS
