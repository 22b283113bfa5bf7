"""A small line/bar chart drawn with QPainter, so docks need no plotting library."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

COLOURS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8"]


class LinePlot(QWidget):
    """Named series of (x, y) points; optional log y axis (losses span decades)."""

    def __init__(self, title: str = "", log_y: bool = True, parent=None):
        super().__init__(parent)
        self.title, self.log_y = title, log_y
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def set_series(self, name: str, points) -> None:
        self.series[name] = [(float(x), float(y)) for x, y in points if math.isfinite(y) and (y > 0 or not self.log_y)]
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def _y(self, value: float) -> float:
        return math.log10(value) if self.log_y else value

    def paintEvent(self, event):  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w, h, m = self.width(), self.height(), 28
        p.setPen(QColor("#888"))
        p.drawRect(m, 8, w - m - 8, h - m - 8)
        p.drawText(m + 4, 20, self.title)
        points = [pt for s in self.series.values() for pt in s]
        if not points:
            p.end()
            return
        xs, ys = [x for x, _ in points], [self._y(y) for _, y in points]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        def to_px(x, y):
            return QPointF(m + (x - x0) / (x1 - x0) * (w - m - 8), 8 + (1 - (self._y(y) - y0) / (y1 - y0)) * (h - m - 16))
        for i, (name, pts) in enumerate(self.series.items()):
            p.setPen(QPen(QColor(COLOURS[i % len(COLOURS)]), 2))
            for a, b in zip(pts, pts[1:]):
                p.drawLine(to_px(*a), to_px(*b))
            p.drawText(w - 110, 22 + 14 * i, name)
        p.setPen(QColor("#aaa"))
        fmt = (lambda v: f"{10 ** v:.2g}") if self.log_y else (lambda v: f"{v:.3g}")
        p.drawText(2, 18, fmt(y1))
        p.drawText(2, h - m, fmt(y0))
        p.drawText(m, h - 6, f"{x0:g}")
        p.drawText(w - 60, h - 6, f"{x1:g}")
        p.end()


class BarChart(QWidget):
    """Horizontal bars with labels, e.g. attribution percentages or per-plane scores."""

    def __init__(self, title: str = "", parent=None):
        super().__init__(parent)
        self.title = title
        self.bars: list[tuple[str, float]] = []
        self.setMinimumHeight(120)

    def set_bars(self, bars) -> None:
        self.bars = [(str(k), float(v)) for k, v in bars]
        self.setMinimumHeight(30 + 18 * len(self.bars))
        self.update()

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.setPen(QColor("#aaa"))
        p.drawText(4, 14, self.title)
        if self.bars:
            top = max(abs(v) for _, v in self.bars) or 1.0
            width = self.width() - 150
            for i, (label, value) in enumerate(self.bars):
                y = 22 + 18 * i
                p.setPen(QColor("#ddd"))
                p.drawText(4, y + 12, label[:14])
                p.fillRect(100, y + 2, int(width * abs(value) / top), 12, QColor(COLOURS[0 if value >= 0 else 3]))
                p.drawText(104 + int(width * abs(value) / top), y + 12, f"{value:.3g}")
        p.end()


__all__ = ["LinePlot", "BarChart", "Qt"]
