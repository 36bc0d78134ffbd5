"""Unit traces: the selected (and pinned) units over time, steered solid and clean dashed, with
a draggable cursor shared with every other view through the session's step."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget

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
        # draw only what is in view, at most a few points per pixel (exports are not downsampled:
        # they render the curve data again)
        self.plot_item.setDownsampling(auto=True, mode="peak")
        self.plot_item.setClipToView(True)
        self.legend = self.plot_item.addLegend(offset=(5, 5))
        self.steered = [self.plot_item.plot([], [], pen=pg.mkPen(PALETTE[i], width=1.5)) for i in range(MAX_CURVES)]
        self.clean = [self.plot_item.plot([], [], pen=pg.mkPen(PALETTE[i], width=1, style=Qt.DashLine))
                      for i in range(MAX_CURVES)]
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
        if not self.cursor.moving:
            self.cursor.setValue(self.session.step)
        # Fit the axes to the new data now rather than when the paint starts: a range changed
        # during a paint schedules a second paint of the whole plot.
        self.plot.scene().prepareForPaint()

    def flush(self):
        """Bring the view up to date now (before an export, or when its tab is raised)."""
        self._lazy.flush()
