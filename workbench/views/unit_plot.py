"""Unit traces: the selected (and pinned) units over time, steered solid and clean dashed, with
a draggable cursor shared with every other view through the session's step."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGraphicsItem, QVBoxLayout, QWidget

from ._common import LazyRefresh

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]
MAX_CURVES = 8


class UnitPlotView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._lazy = LazyRefresh(self, self.refresh)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "token")
        self.plot_item.setLabel("left", "activation")
        self.plot_item.showGrid(x=True, y=True, alpha=0.2)
        for name in ("left", "bottom"):
            # Each axis draws its grid lines across the whole plot, so any change to a curve repainted
            # both (tick labels and grid, ~5 ms a paint here); cached, they are copied until their
            # ticks change, which the steady range below makes rare while steering.
            self.plot_item.getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        # draw only what is in view, at most a few points per pixel (exports are not downsampled:
        # they render the curve data again)
        self.plot_item.setDownsampling(auto=True, mode="peak")
        self.plot_item.setClipToView(True)
        self.legend = self.plot_item.addLegend(offset=(5, 5))
        # The axes fit an invisible extent, not the curves (see _fit_extent): while steering they
        # stay put unless a curve leaves them.
        self.steered = [self._curve(pen=pg.mkPen(PALETTE[i], width=1.5)) for i in range(MAX_CURVES)]
        self.clean = [self._curve(pen=pg.mkPen(PALETTE[i], width=1, style=Qt.DashLine)) for i in range(MAX_CURVES)]
        self._extent = pg.PlotDataItem([], [], pen=pg.mkPen(0, 0, 0, 0))
        self.plot_item.addItem(self._extent)
        self._extent_key, self._extent_range = None, None
        self.cursor = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen((20, 20, 20), width=1))
        self.cursor.sigPositionChangeFinished.connect(lambda line: session.set_step(int(round(line.value()))))
        self.cursor.sigDragged.connect(lambda line: session.set_step(int(round(line.value()))))
        self.plot_item.addItem(self.cursor)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.plot)
        self._legend_labels: list[str] = []
        self._n_shown = MAX_CURVES  # curves that may hold data
        self._clean_keys: list = [None] * MAX_CURVES  # (clean trace, label) each dashed curve shows
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._lazy.request)

    def series(self) -> list[tuple[str, object, object]]:
        """(label, steered values, clean values or None) for each curve shown."""
        s = self.session
        if s.trace is None:
            return []
        wanted = [(s.probe, u) for u in s.units] + [p for p in s.pinned if p not in [(s.probe, u) for u in s.units]]
        out = []
        for probe, unit in wanted[:MAX_CURVES]:
            if probe not in s.trace.arrays:
                continue
            a = s.trace[probe]
            a = a.reshape(a.shape[0], -1)
            if unit >= a.shape[1]:
                continue
            clean = None
            if s.interventions and s.clean_trace is not None and probe in s.clean_trace.arrays:
                c = s.clean_trace[probe]
                clean = c.reshape(c.shape[0], -1)[:, unit]
            out.append((f"{probe}[{unit}]", a[:, unit], clean))
        return out

    def refresh(self):
        series = self.series()
        labels = [label for label, _, _ in series]
        if labels != self._legend_labels:  # rebuilding the legend re-lays out the plot: only on change
            self._legend_labels = labels
            self.legend.clear()
            for i, label in enumerate(labels):
                self.legend.addItem(self.steered[i], label)
        for i in range(MAX_CURVES):
            if i < len(series):
                label, steered, clean = series[i]
                self.steered[i].setData(steered)
                key = (self.session.clean_trace if clean is not None else None, label)
                if self._clean_keys[i] is None or self._clean_keys[i][0] is not key[0] or self._clean_keys[i][1] != label:
                    self._clean_keys[i] = key  # steering keeps the clean run: its curve stays as it is
                    self.clean[i].setData([] if clean is None else clean)
            elif i < self._n_shown:  # emptied once; unused curves are not touched again
                self.steered[i].setData([], [])
                self.clean[i].setData([], [])
                self._clean_keys[i] = None
        self._n_shown = len(series)
        self._fit_extent(series)
        if not self.cursor.moving:
            self.cursor.setValue(self.session.step)
        # Fit the axes to the new data now rather than when the paint starts: a range changed
        # during a paint schedules a second paint of the whole plot.
        self.plot.scene().prepareForPaint()

    def _curve(self, pen):
        curve = pg.PlotDataItem([], [], pen=pen)
        self.plot_item.addItem(curve, ignoreBounds=True)
        return curve

    def _fit_extent(self, series):
        """What the axes fit: every value shown, but while only the steered curves change (the
        clean run and the curves shown stay the same, as during a slider drag) the range only
        grows.  A range that follows every edit re-draws the axes and their grid each time and
        makes the curves jump; the clean run's curves stay where they were."""
        values = [v for _, steered, clean in series for v in (steered, clean) if v is not None and len(v)]
        finite = [v[np.isfinite(v)] for v in values]
        finite = [v for v in finite if v.size]
        if not finite:
            self._extent_key = self._extent_range = None
            self._extent.setData([], [])
            return
        lo, hi = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
        n = max(len(v) for v in values)
        key = (self.session.clean_trace, tuple(label for label, _, _ in series), n)
        same = self._extent_key is not None and self._extent_key[0] is key[0] and self._extent_key[1:] == key[1:]
        if same:
            old_lo, old_hi = self._extent_range
            if old_lo <= lo and hi <= old_hi:
                return  # still inside: the axes stay as they are
            lo, hi = min(lo, old_lo), max(hi, old_hi)
        self._extent_key, self._extent_range = key, (lo, hi)
        self._extent.setData([0, n - 1], [lo, hi])

    def flush(self):
        """Bring the view up to date now (before an export, or when its tab is raised)."""
        self._lazy.flush()
