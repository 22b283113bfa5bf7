"""The one plot widget of the docks: pyqtgraph line plots with labelled axes.

pyqtgraph (as careamics-napari and napari-n2v use) draws with Qt itself, so it lives happily
inside napari's window, gives real axes with ticks, a log scale for losses that span
decades, a legend and mouse zoom, and redraws thousands of points fast enough for a live
loss curve.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from qtpy.QtWidgets import QSizePolicy

COLOURS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8"]
HIGHLIGHT = "#ffb000"


class LinePlot(pg.PlotWidget):
    """Named series of (x, y) points, with axis labels and an optional log y axis.

    ``series`` holds what is drawn (finite points only; positive ones on a log axis);
    ``set_highlight`` marks some points of a series (e.g. the kept focal planes).
    """

    def __init__(self, title: str = "", x_label: str = "", y_label: str = "", log_y: bool = False, parent=None):
        super().__init__(parent=parent, background=None)
        self.log_y = log_y
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.highlighted: dict[str, set[int]] = {}
        self._items: dict[str, pg.PlotDataItem] = {}
        self._marks: dict[str, pg.ScatterPlotItem] = {}
        item = self.getPlotItem()
        item.setTitle(title, size="9pt")
        item.setLabel("bottom", x_label)
        item.setLabel("left", y_label)
        item.setLogMode(x=False, y=log_y)
        for side in ("left", "bottom"):  # "loss (x0.001)" on a log axis reads badly: plain numbers
            item.getAxis(side).enableAutoSIPrefix(False)
        item.showGrid(x=True, y=True, alpha=0.2)
        self._legend = item.addLegend(offset=(-10, 10))
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def set_series(self, name: str, points, symbol: str | None = None) -> None:
        self.series[name] = [(float(x), float(y)) for x, y in points
                             if math.isfinite(float(y)) and (float(y) > 0 or not self.log_y)]
        xs = [x for x, _ in self.series[name]]
        ys = [y for _, y in self.series[name]]
        if name not in self._items:
            colour = COLOURS[len(self._items) % len(COLOURS)]
            self._items[name] = self.plot([], [], name=name, pen=pg.mkPen(colour, width=2),
                                          symbol=symbol, symbolBrush=colour if symbol else None, symbolSize=7)
        self._items[name].setData(xs, ys)
        self._draw_marks(name)

    def set_highlight(self, name: str, indices) -> None:
        """Mark the points of ``name`` whose x values are ``indices`` (filled, highlighted)."""
        self.highlighted[name] = {int(i) for i in indices}
        self._draw_marks(name)

    def _draw_marks(self, name: str) -> None:
        chosen = self.highlighted.get(name)
        if not chosen:
            return
        points = [(x, y) for x, y in self.series.get(name, []) if int(x) in chosen]
        if name not in self._marks:
            self._marks[name] = pg.ScatterPlotItem(size=11, brush=pg.mkBrush(HIGHLIGHT), pen=pg.mkPen("w"))
            self.addItem(self._marks[name])
        self._marks[name].setData([x for x, _ in points], [y for _, y in points])

    def clear(self) -> None:
        for name in list(self._items):
            self._items[name].setData([], [])
        for mark in self._marks.values():
            mark.setData([], [])
        self.series.clear()
        self.highlighted.clear()


__all__ = ["LinePlot"]
