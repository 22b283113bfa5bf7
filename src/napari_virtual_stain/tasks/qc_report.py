"""The stain-QC report: the training-free findings and the imputation verdicts of one stack.

``to_dict`` is what ``virtual-stain qc`` writes to report.json: ``flagged`` (marker names),
and per marker its ``findings`` (class, sentence, evidence, and ``start``/``stop`` for areas),
``regions`` (``{"start": [y, x], "stop": [y, x], "class": ..., "evidence": {...}}`` in whole-image pixels),
whether it could be judged at all (``assessable``, ``not_assessed``: why not) and the
measures behind the checks. ``warnings`` names what the run could not use (an unreadable
imputer file, a stack type the imputers were not trained on).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .region import Region


@dataclass
class QCReport:
    markers: dict  # {marker: maxim_qc.MarkerQC}  # the imputation check, per marker with an imputer
    unchecked: list[str]  # markers of the stack without an imputer
    region: Region
    settings: Any  # maxim_qc.QCSettings
    rounds: int
    warnings: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)  # {marker: qc_checks.MarkerChecks}, the training-free checks
    names: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        order = self.names or list(dict.fromkeys(list(self.checks) + list(self.markers)))
        return [m for m in order if (m in self.checks and self.checks[m].findings)
                or (m in self.markers and self.markers[m].flagged)]

    def findings(self, marker: str) -> list[dict[str, Any]]:
        """Every finding on ``marker`` as report entries (class, sentence, evidence, start/stop)."""
        out = [f.to_dict(self.region.start) for f in getattr(self.checks.get(marker), "findings", [])]
        q = self.markers.get(marker)
        if q is not None and q.flagged:
            evidence = {"scores": q.scores, "expected": q.expected, "treated_missing": q.treated_missing}
            for reason in q.reasons:
                if reason.startswith("regions") and q.regions:
                    for b in q.regions:
                        out.append({"class": "imputation", "sentence": f"{marker}: acquired and imputed differ here "
                                    f"({b.kind})", "evidence": _json_floats(dict(evidence, area=b.area,
                                    mean_difference=b.mean_difference)), "start": [b.y0, b.x0], "stop": [b.y1, b.x1]})
                elif not reason.startswith("regions"):
                    out.append({"class": "imputation", "sentence": reason, "evidence": _json_floats(evidence)})
        return out

    def regions(self, marker: str) -> list[dict[str, Any]]:
        return [{"start": f["start"], "stop": f["stop"], "class": f["class"], "evidence": f["evidence"]}
                for f in self.findings(marker) if "start" in f]

    def rows(self) -> list[dict[str, Any]]:
        """One row per finding (marker, class, sentence, start, stop): the dock's table."""
        return [dict(f, marker=m) for m in self.flagged for f in self.findings(m)]

    def to_dict(self) -> dict[str, Any]:
        order = self.names or list(dict.fromkeys(list(self.checks) + list(self.markers)))
        per_marker = {}
        for m in order:
            c, q = self.checks.get(m), self.markers.get(m)
            entry: dict[str, Any] = {"flagged": m in self.flagged, "findings": self.findings(m),
                                     "regions": self.regions(m)}
            if c is not None:
                entry.update(assessable=c.assessable, not_assessed=list(c.not_assessed),
                             measures=_json_floats(_plain_measures(c.measures)))
            if q is not None:
                entry["imputation"] = q.to_dict()
            per_marker[m] = entry
        return {
            "flagged": self.flagged,
            "markers": per_marker,
            "not_assessable": [m for m, c in self.checks.items() if not c.assessable],
            "unchecked": list(self.unchecked),
            "region": {"start": list(self.region.start), "stop": list(self.region.stop)},
            "rounds": self.rounds,
            "settings": asdict(self.settings),
            "thresholds": _json_floats(dict(self.thresholds)) if getattr(self, "thresholds", None) else {},
            "warnings": list(self.warnings),
        }


def _plain_measures(measures):
    from .qc_checks import _plain

    return _plain(measures)


def _json_floats(value):
    """Replace nan/inf by None so the report is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_floats(v) for v in value]
    return value
