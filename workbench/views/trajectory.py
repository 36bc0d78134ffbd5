"""Trajectory view: the selected layer's hidden state on its first two principal components.

The axes are fitted on the clean trace (no interventions), so they stay put while the user
steers; the current trace is projected on them and drawn as a connected line (broken between
sequences) with points coloured by position or by token class, and the current step ringed.
When interventions change the trajectory, the clean one is drawn faintly beneath.  Clicking a
point moves the cursor there.

Cheap on long traces: the PCA is fitted on at most ``MAX_FIT_ROWS`` rows (a seeded subsample)
and cached per clean trace (kept across re-runs of the same input, see ``TraceKey``); at most
``MAX_POINTS`` points are drawn as markers (every k-th step) and ``MAX_LINE_POINTS`` in the line.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine.analysis import neurons as N
from engine.analysis import projection as P
from engine.probes import layer_probe

from ._common import (LazyRefresh, MessageStack, TraceKey, layer_sites, legend_below, no_model_or_trace,
                      view_layer)

CLASS_COLOURS = {  # by engine.analysis.neurons.TOKEN_CLASSES
    "letter": (31, 119, 180), "digit": (255, 127, 14), "space": (140, 140, 140),
    "punctuation": (214, 39, 40), "newline": (44, 200, 44),
}
STATE_SITES = ("h", "out", "y")  # the layer output to project, first one the model records


class TrajectoryView(QWidget):
    MAX_FIT_ROWS = 5000
    MAX_POINTS = 5000
    MAX_LINE_POINTS = 200_000

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.colour_by = QComboBox()
        self.colour_by.addItems(["position", "token class"])
        self.colour_by.currentIndexChanged.connect(lambda _i: self._lazy.request())
        self.info = QLabel()
        self.info.setTextFormat(Qt.PlainText)
        top = QHBoxLayout()
        top.addWidget(QLabel("colour by"))
        top.addWidget(self.colour_by)
        top.addWidget(self.info, 1)

        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.showGrid(x=True, y=True, alpha=0.15)
        for axis in ("bottom", "left"):
            self.plot_item.getAxis(axis).enableAutoSIPrefix(False)
        self.legend = legend_below(self.plot_item)  # off the points
        self.stack = MessageStack(self.plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.stack, 1)

        self._clean_line = pg.PlotCurveItem(pen=pg.mkPen((150, 150, 150, 110), width=1, style=Qt.DashLine))
        self._line = pg.PlotCurveItem(pen=pg.mkPen((170, 170, 170, 150), width=1))
        self._points = pg.ScatterPlotItem(size=6, pen=None)
        self._class_points = {c: pg.ScatterPlotItem(size=6, pen=None, brush=pg.mkBrush(*CLASS_COLOURS[c], 220))
                              for c in N.TOKEN_CLASSES}
        self._marker = pg.ScatterPlotItem(size=20, symbol="o", pen=pg.mkPen((255, 40, 40), width=3),
                                          brush=pg.mkBrush(0, 0, 0, 0))
        self._marker.setZValue(20)
        for item in (self._clean_line, self._line, self._points, *self._class_points.values(), self._marker):
            self.plot_item.addItem(item)
        for item in (self._points, *self._class_points.values()):
            item.sigClicked.connect(self._on_points_clicked)
        cmap = pg.colormap.get("viridis")
        self._brushes = [pg.mkBrush(c) for c in cmap.getLookupTable(nPts=256, mode="qcolor")]
        self.colour_bar = pg.ColorBarItem(values=(0, 1), colorMap=cmap, interactive=False, width=12,
                                          label="position")
        self.plot_item.layout.addItem(self.colour_bar, 2, 5)
        self.plot_item.layout.setColumnFixedWidth(4, 5)

        self.probe: str | None = None
        self.result: P.PCAResult | None = None  # PCA of the clean trace
        self.coords: np.ndarray | None = None  # the current trace on its axes, [tokens, 2]
        self.shown: np.ndarray = np.zeros(0, dtype=np.int64)  # token indices drawn as markers
        self._pca_key = None
        self._proj_key = None
        self._lazy = LazyRefresh(self, self.refresh)
        session.model_changed.connect(self._lazy.request)
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._on_selection)
        self.refresh()

    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        """Bring a hidden view up to date now (before exporting it, say)."""
        self._lazy.flush()

    # -- data --------------------------------------------------------------------------------------
    def _state_probe(self, layer: int) -> str | None:
        sites = layer_sites(self.session, layer)
        for site in STATE_SITES:
            if site in sites:
                return layer_probe(layer, site)
        return None

    def _compute(self, probe: str):
        s = self.session
        clean = s.clean_trace if s.clean_trace is not None and probe in s.clean_trace.arrays else s.trace
        if self._pca_key is None or self._pca_key[1] != probe or not self._pca_key[0].matches(s.model, clean):
            self.result = P.pca(clean[probe], k=2, max_rows=self.MAX_FIT_ROWS)
            self._pca_key = (TraceKey(s.model, clean), probe)
            self._proj_key = None
        if s.trace is clean:
            self.coords = self.result.coords
        elif self._proj_key is None or self._proj_key[0] is not s.trace:
            self.coords = P.project(s.trace[probe], self.result.mean, self.result.components)
            self._proj_key = (s.trace, probe)
        if self.coords.shape[1] < 2:  # a one-unit layer: the second axis is flat
            self.coords = np.column_stack([self.coords, np.zeros(len(self.coords))])
        return clean

    def refresh(self):
        self._lazy.pending = False
        s = self.session
        msg = no_model_or_trace(s)
        layer = None
        if msg is None:
            layer = view_layer(s)
            self.probe = self._state_probe(layer) if layer is not None else None
            if self.probe is None:
                msg = (f"Layer {layer} records no hidden state ({', '.join(STATE_SITES)}), so there is no "
                       "trajectory to show." if layer is not None else "This model has no recurrent layers.")
            elif self.probe not in s.trace.arrays:
                msg = f"The current trace did not record {self.probe}."
        if msg is not None:
            self.probe, self.result, self.coords = None, None, None
            for item in (self._clean_line, self._line, self._points, self._marker, *self._class_points.values()):
                item.setData([], [])
            self.info.setText("")
            self.stack.show_message(msg)
            return
        self.stack.show_content()
        clean = self._compute(self.probe)
        self._draw(clean)
        self._update_marker()

    def _draw(self, clean):
        trace, xy = self.session.trace, self.coords
        n = trace.n_tokens
        ratio = self.result.explained_variance_ratio
        self.plot_item.setLabel("bottom", f"PC1 ({100 * ratio[0]:.1f}% of variance)")
        self.plot_item.setLabel("left", f"PC2 ({100 * ratio[1]:.1f}% of variance)" if len(ratio) > 1 else "PC2 (none)")
        self.plot_item.setTitle(f"{self.probe} on its first two principal components")
        # the line, broken between sequences
        line_step = max(1, -(-n // self.MAX_LINE_POINTS))
        idx = np.arange(0, n, line_step)
        connect = np.ones(len(idx), dtype=bool)
        seq_of = np.searchsorted(trace.offsets, idx, side="right")
        connect[:-1] = seq_of[:-1] == seq_of[1:]
        self._line.setData(xy[idx, 0], xy[idx, 1], connect=connect)
        if trace is not clean:
            cxy = self.result.coords
            self._clean_line.setData(cxy[idx, 0], cxy[idx, 1], connect=connect)
        else:
            self._clean_line.setData([], [])
        # the markers
        step = max(1, -(-n // self.MAX_POINTS))
        self.shown = np.arange(0, n, step)
        by_class = self.colour_by.currentIndex() == 1 and trace.token_text is not None
        self.colour_by.model().item(1).setEnabled(trace.token_text is not None)
        self.legend.clear()
        if by_class:
            self._points.setData([], [])
            self.colour_bar.hide()
            classes = N.token_classes(trace.token_text)[self.shown]
            for c, name in enumerate(N.TOKEN_CLASSES):
                sel = self.shown[classes == c]
                self._class_points[name].setData(xy[sel, 0], xy[sel, 1], data=sel)
                if len(sel):
                    self.legend.addItem(self._class_points[name], name)
        else:
            for item in self._class_points.values():
                item.setData([], [])
            lut = (self.shown * 255 // max(n - 1, 1)).astype(np.int64)
            self._points.setData(xy[self.shown, 0], xy[self.shown, 1], data=self.shown,
                                 brush=[self._brushes[i] for i in lut])
            self.colour_bar.setLevels((0, max(n - 1, 1)))
            self.colour_bar.show()
        notes = [f"{n} steps"]
        if self.result.n_fit < clean.n_tokens:
            notes.append(f"axes fitted on {self.result.n_fit} sampled steps")
        if step > 1:
            notes.append(f"one step in {step} marked")
        if trace is not clean:
            notes.append("dashed: without interventions")
        if self.colour_by.currentIndex() == 1 and trace.token_text is None:
            notes.append("numeric input: no token classes, coloured by position")
        self.info.setText("; ".join(notes))
        self._set_range(xy if trace is clean else np.vstack([xy, self.result.coords]))

    def _set_range(self, xy):
        """Fit the data, but never zoom an axis into rounding noise (a flat PC2, say)."""
        lo, hi = np.nanmin(xy[:, :2], axis=0), np.nanmax(xy[:, :2], axis=0)
        span = hi - lo
        least = max(float(span.max()) * 0.05, 1e-6)
        centre = (lo + hi) / 2
        half = np.maximum(span, least) / 2
        self.plot_item.setXRange(centre[0] - half[0], centre[0] + half[0], padding=0.05)
        self.plot_item.setYRange(centre[1] - half[1], centre[1] + half[1], padding=0.05)

    def _update_marker(self):
        if self.coords is None or len(self.coords) == 0:
            self._marker.setData([], [])
            return
        t = min(max(self.session.step, 0), len(self.coords) - 1)
        self._marker.setData([self.coords[t, 0]], [self.coords[t, 1]])

    def _on_selection(self):
        if not self.isVisible():
            self._lazy.pending = True
            return
        if self._lazy.pending:
            self.refresh()
            return
        if self.session.model is not None and self.session.trace is not None:
            layer = view_layer(self.session)
            if layer is not None and self._state_probe(layer) != self.probe:
                self.refresh()
                return
        self._update_marker()

    def _on_points_clicked(self, item, points, ev=None):
        if len(points):
            self.session.set_step(int(points[0].data()))
