"""Unit traces: the selected (and pinned) units over time, steered solid and clean dashed, with
a draggable cursor shared with every other view through the session's step.  For a model that
reads numeric inputs, the input series itself (each input column over time, named by the
model's ``input_names`` when it has them) is plotted below, on the same time axis."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGraphicsItem, QVBoxLayout, QWidget

from ._common import LazyRefresh, legend_below

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]
MAX_CURVES = 8
# the input series in muted colours, so that they do not read as unit curves
INPUT_PALETTE = [(90, 90, 90), (230, 150, 40), (60, 150, 150), (170, 110, 170), (130, 130, 40), (200, 90, 90),
                 (90, 120, 200), (120, 170, 90)]
MAX_INPUT_COLUMNS = 8  # input columns plotted (the first ones; the legend says when there are more)


class UnitPlotView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._lazy = LazyRefresh(self, self.refresh)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "token")
        self.plot_item.setLabel("left", "activation")
        self.plot_item.getAxis("bottom").enableAutoSIPrefix(False)  # steps are counts: never "token (x0.001)"
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
        self.legend = legend_below(self.plot_item)  # a row under the axis, off the curves
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
        self.input_plot = pg.PlotWidget()  # the numeric input series, on the same time axis
        self.input_item = self.input_plot.getPlotItem()
        self.input_item.setLabel("left", "input")
        self.input_item.getAxis("bottom").enableAutoSIPrefix(False)
        self.input_item.showGrid(x=True, y=True, alpha=0.2)
        self.input_item.setXLink(self.plot_item)
        self.input_item.setDownsampling(auto=True, mode="peak")
        self.input_item.setClipToView(True)
        self.input_legend = legend_below(self.input_item)
        self.input_curves: list = []
        self._input_key = None
        self._numeric = False
        self.input_cursor = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen((20, 20, 20), width=1))
        self.input_item.addItem(self.input_cursor)
        self.input_plot.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.plot, 3)
        layout.addWidget(self.input_plot, 2)
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
        self._show_inputs()
        numeric = self.session.trace is not None and self.session.trace.inputs is not None
        if numeric != self._numeric:
            self._numeric = numeric
            self.plot_item.setLabel("bottom", "step" if numeric else "token")
        if not self.cursor.moving:
            self.cursor.setValue(self.session.step)
        self.input_cursor.setValue(self.session.step)
        # Fit the axes to the new data now rather than when the paint starts: a range changed
        # during a paint schedules a second paint of the whole plot.
        self.plot.scene().prepareForPaint()

    def input_series(self) -> list[tuple[str, np.ndarray]]:
        """(name, values) of each input column plotted; empty for models that read tokens."""
        trace = self.session.trace
        if trace is None or trace.inputs is None:
            return []
        names = trace.model_info.get("input_names")
        inputs = trace.inputs.reshape(trace.n_tokens, -1)
        width = inputs.shape[1]
        if not isinstance(names, (list, tuple)) or len(names) != width:
            names = [f"input {k}" for k in range(width)]
        return [(str(names[k]), inputs[:, k]) for k in range(min(width, MAX_INPUT_COLUMNS))]

    def _show_inputs(self):
        """The input series below the unit traces (drawn again only when the input changes)."""
        trace = self.session.trace
        key = None if trace is None or trace.inputs is None else (trace.inputs.shape, trace.inputs.tobytes())
        if key == self._input_key:
            return
        self._input_key = key
        series = self.input_series()
        self.input_plot.setVisible(bool(series))
        for curve in self.input_curves:
            self.input_item.removeItem(curve)
        self.input_curves = []
        self.input_legend.clear()
        for k, (name, values) in enumerate(series):
            curve = pg.PlotDataItem(values, pen=pg.mkPen(INPUT_PALETTE[k % len(INPUT_PALETTE)], width=1.2))
            self.input_item.addItem(curve)
            self.input_curves.append(curve)
            self.input_legend.addItem(curve, name)
        width = trace.inputs.reshape(trace.n_tokens, -1).shape[1] if series else 0
        if width > len(series):
            self.input_legend.addItem(pg.PlotDataItem([], []), f"(first {len(series)} of {width} columns)")

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
