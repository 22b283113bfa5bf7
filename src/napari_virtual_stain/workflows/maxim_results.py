"""MAXIM results -> napari layer data tuples, table rows and the dock's sentences (no Qt, no napari).

``place`` arguments are the layer arguments that put an array on the markers' pixels from a
start (``widgets.geometry.placement``): the dock computes them, these functions only use them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..tasks.layers import output_layer_name, overlay_tuples

OWN = {"maxim": True}  # marks the dock's own layers (never offered as markers)
QC_COLUMNS = ["marker", "class", "where (y, x)", "evidence"]


def default_markers(shapes: dict[str, tuple]) -> list[str]:
    """The marker layers to start with: every 2D grey layer of the most common shape."""
    if not shapes:
        return []
    listed = list(shapes.values())
    common = max(listed, key=listed.count)
    return [name for name, shape in shapes.items() if shape == common]


def imputed_tuples(result, source: str, place: dict) -> list[tuple]:
    """The imputed marker as one image layer "<source> · <marker> (imputed)", values 0-1."""
    return overlay_tuples(result.data[None], [f"{result.target} (imputed)"], source, place, metadata=OWN,
                          contrast=[(0.0, 1.0)])


def describe_imputed(result) -> str:
    return f"{result.target} imputed over {result.region.shape[0]}x{result.region.shape[1]} pixels."


def boxes_name(source: str) -> str:
    return output_layer_name(source, "QC flagged regions")


def qc_tuples(report, source: str, maps_place: dict, boxes_place: dict) -> list[tuple]:
    """The imputation disagreement maps (over the report's region) and, when any marker is
    flagged in a region, one rectangle per finding ("<source> · QC flagged regions", in
    whole-image pixels, labelled with marker and class)."""
    markers = [m for m, q in report.markers.items() if q.disagreement is not None]
    tuples = []
    if markers:
        maps = np.stack([report.markers[m].disagreement for m in markers])
        tuples += overlay_tuples(maps, [f"QC disagreement {m}" for m in markers], source, maps_place, metadata=OWN,
                                 contrast=[(0.0, max(0.5, report.settings.region_floor * 2))] * len(markers))
    boxes = [f for f in report.rows() if "start" in f]
    if boxes:
        rects = [np.array([f["start"], f["stop"]], dtype=float) for f in boxes]
        tuples.append((rects, {"name": boxes_name(source), "shape_type": "rectangle", "edge_color": "yellow",
                               "face_color": "transparent", "edge_width": 2, **boxes_place,
                               "features": {"marker": [f["marker"] for f in boxes],
                                            "class": [f["class"] for f in boxes]},
                               "text": {"string": "{marker} {class}", "color": "yellow", "size": 8},
                               "metadata": dict(OWN)}, "shapes"))
    return tuples


def qc_table(report) -> list[tuple[list[str], str]]:
    """One row per finding: the cells of :data:`QC_COLUMNS` and the finding's sentence."""
    rows = []
    for finding in report.rows():
        where = f"{finding['start']} - {finding['stop']}" if "start" in finding else "whole channel"
        evidence = ", ".join(f"{k} {v}" for k, v in finding["evidence"].items() if not isinstance(v, dict))
        rows.append(([str(v) for v in (finding["marker"], finding["class"], where, evidence)], finding["sentence"]))
    return rows


def describe_qc(report) -> str:
    flagged = report.flagged
    unjudged = [m for m, c in report.checks.items() if not c.assessable]
    return (f"Flagged: {', '.join(flagged)}." if flagged else "No stain flagged.") + (
        f" Not assessable: {', '.join(unjudged)}." if unjudged else "")


def qc_summary(path: str, report) -> str:
    """What the ``qc`` command prints for one stack: the flags, each finding, then the other markers."""
    flagged = report.flagged
    lines = [f"{path}: " + (f"FLAGGED {', '.join(flagged)}" if flagged else "no stain flagged")
             + f" ({len(report.names)} channels, {len(report.to_dict()['not_assessable'])} not assessable)"]
    for marker in flagged:
        for finding in report.findings(marker):
            where = f" at {finding['start']}-{finding['stop']}" if "start" in finding else ""
            lines.append(f"  {marker} FLAGGED {finding['class']}{where}: {finding['sentence']}")
    for marker, q in report.markers.items():
        if marker not in flagged:
            lines.append(f"  {marker} {'ok' if q.assessable else 'imputer too poor to judge'} "
                         f"(imputed PCC {q.scores['pcc']:.2f})")
    return "\n".join(lines)


def finding_box(finding: dict, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) in image pixels of a finding: its box, or the whole channel."""
    if "start" in finding:
        return np.asarray(finding["start"], float), np.asarray(finding["stop"], float)
    return np.zeros(2), np.asarray(shape[-2:], float)


def attribution_bars(result) -> list[tuple[str, int, str]]:
    """(marker, rounded percent, tooltip) per input marker, largest share first."""
    return [(marker, int(round(share)), f"{marker}: {share:.1f}% of the total |attribution| to {result.target}")
            for marker, share in sorted(result.percent.items(), key=lambda kv: -kv[1])]


def describe_attribution(result) -> str:
    return f"Input markers driving {result.target} (integrated gradients, % of total):"


def describe_cells(result) -> str:
    base = result.baselines.get("BL-Mean", {})
    return (f"{result.n_cells} cells, {result.n_positive} positive (above {result.threshold:.3f}); "
            f"cell MAE {result.mae:.4f} (BL-Mean {base.get('mae', float('nan')):.4f}); "
            f"AP {result.average_precision:.3f} (BL-Mean {base.get('average_precision', float('nan')):.3f})")


def describe_trained(result) -> str:
    counted = [m for m, v in result.per_marker.items() if v.get("counts")]
    lines = [f"{m}: MAE {v['imputer']['mae']:.3f} (BL-Mean {v['bl_mean']['mae']:.3f})"
             for m, v in result.per_marker.items() if "imputer" in v]
    return (f"Joint imputer, {result.steps} steps; imputation check counts for {', '.join(counted) or 'no marker'}. "
            "Held out: " + "; ".join(lines))
