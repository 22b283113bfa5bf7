"""DeepLIIF cells -> what the dock shows and writes: label colours, features, the counts sentence, exports.

No Qt, no napari: the DeepLIIF dock sets these on its cell layer and labels; the cell files
of ``virtual-stain deepliif``/``deepliif-cells`` come from ``tasks.deepliif_files``.
"""

from __future__ import annotations

from ..tasks.deepliif import cell_polygons, cell_rows, write_csv, write_geojson
from ..tasks.deepliif_cells import NEGATIVE, POSITIVE

CLASS_COLOURS = {POSITIVE: (1.0, 0.1, 0.1, 0.7), NEGATIVE: (0.2, 0.4, 1.0, 0.7)}  # excluded: transparent
EXPORTS = {"csv": "CSV (*.csv)", "geojson": "GeoJSON (*.geojson)"}


def cell_colours(classification) -> dict:
    """Label -> RGBA: positive red, negative blue, excluded cells and background transparent."""
    colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    colours.update({int(i): CLASS_COLOURS[int(c)] for i, c in enumerate(classification.classes)
                    if c in CLASS_COLOURS})
    return colours


def cell_features(cells, classification) -> list[dict]:
    """The per-cell table as a Labels layer's features (napari maps rows to labels through "index")."""
    rows = cell_rows(cells, classification)
    for row in rows:
        row["index"] = row["id"]
    return rows


def describe_counts(classification) -> str:
    c, t = classification, classification.thresholds
    marker = "no marker rule" if t.marker is None else f"marker > {t.marker}"
    upper = "" if t.size_upper is None else f" and < {t.size_upper}"
    return (f"{c.total} cells: {c.positive} positive, {c.negative} negative — {c.percent_positive:.1f}% positive "
            f"(size > {t.size}{upper} px, {marker}, {c.resolution})")


def export_cells(result, classification, path, kind: str):
    """Write the cells as CSV or GeoJSON, in image pixel coordinates of the input layer (its full
    resolution's, for maps of a pyramid level)."""
    if kind not in EXPORTS:
        raise ValueError(f"not a cell export: {kind!r}")
    offset, scale = result.region.start, float(getattr(result, "downsample", 1.0))
    if kind == "csv":
        return write_csv(path, cell_rows(result.cells, classification, offset, scale=scale))
    return write_geojson(path, cell_polygons(result.cells, classification, offset, scale=scale))
