"""Gate view: per-gate activation histograms and the saturation scatter of one layer.

The layer is the selected probe's layer (the top layer when the probe has none).  The left
plot overlays one histogram per gate probe of that layer (fractions of all values); the right
plot (``plot_item``, the one exported) has one point per unit and gate: x = fraction of steps
with the gate < 0.1, y = fraction > 0.9 (Karpathy et al.'s left/right saturation).  Clicking a
point selects that gate probe and unit.  Tanh "gates" (LSTM ``gate_g``, GRU ``gate_n``) range
over -1..1: they appear in the histograms, marked as tanh, and not in the saturation plot.

Cheap on long traces: the saturation fractions use every step up to ``MAX_SATURATION_VALUES``
values per gate and a strided subsample of steps beyond; histograms likewise with
``MAX_HISTOGRAM_VALUES``; results are cached per layer and trace (kept across clean re-runs
of the same input, see ``TraceKey``).
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget

from engine.analysis import gates as G
from engine.probes import layer_probe

from ._common import (LazyRefresh, MessageStack, TraceKey, layer_sites, legend_below, no_model_or_trace,
                      view_layer, wrapped_label)

GATE_COLOURS = {
    "gate_i": (31, 119, 180), "gate_f": (255, 127, 14), "gate_o": (44, 160, 44),
    "gate_g": (160, 160, 160), "gate_r": (148, 103, 189), "gate_z": (214, 39, 40),
    "gate_n": (160, 160, 160), "gate": (23, 190, 207),
}
_EXTRA_COLOURS = [(227, 119, 194), (188, 189, 34), (140, 86, 75), (127, 127, 127)]


class GateView(QWidget):
    MAX_SATURATION_VALUES = 8_000_000
    MAX_HISTOGRAM_VALUES = 2_000_000
    BINS = 40

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.title = wrapped_label()
        self.graphics = pg.GraphicsLayoutWidget()
        self.stack = MessageStack(self.graphics)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.title)
        layout.addWidget(self.stack, 1)

        self.hist_plot = self.graphics.addPlot(row=0, col=0)
        self.hist_plot.setLabel("bottom", "activation")
        self.hist_plot.setLabel("left", "fraction of values")
        self.hist_plot.getAxis("left").enableAutoSIPrefix(False)
        self.hist_plot.setTitle("gate activation distributions")
        # the legend in a row of its own under the axis, off the curves (which pile up at 0 and 1)
        self.hist_legend = legend_below(self.hist_plot)
        self.sat_plot = self.graphics.addPlot(row=0, col=1)
        self.sat_plot.setLabel("bottom", "steps with gate &lt; 0.1 (left-saturated)")
        self.sat_plot.setLabel("left", "steps with gate &gt; 0.9")
        self.sat_plot.setTitle("gate saturation, one point per unit")
        for axis in ("bottom", "left"):
            self.sat_plot.getAxis(axis).enableAutoSIPrefix(False)
        self.sat_plot.setXRange(0, 1, padding=0.03)
        self.sat_plot.setYRange(0, 1, padding=0.03)
        self.sat_plot.disableAutoRange()
        self.sat_plot.setAspectLocked(True)
        # top right: above the line x + y = 1, where no unit can lie, so the legend covers no point
        self.sat_legend = self.sat_plot.addLegend(offset=(-10, 10))
        # x + y <= 1: no unit can lie beyond this line
        self.sat_plot.addItem(pg.PlotCurveItem([0, 1], [1, 0], pen=pg.mkPen((128, 128, 128), style=Qt.DashLine)))
        self.plot_item = self.sat_plot
        self.stacked = False  # the two plots side by side, or (in a tall view) one above the other

        self._hist_curves: dict[str, pg.PlotDataItem] = {}
        self._scatters: dict[str, pg.ScatterPlotItem] = {}
        self._ring = pg.ScatterPlotItem(symbol="o", size=17, pen=pg.mkPen((255, 40, 40), width=2.5),
                                        brush=pg.mkBrush(0, 0, 0, 0))
        self._ring.setZValue(10)
        self.sat_plot.addItem(self._ring)

        self.layer: int | None = None
        self.data: dict[str, dict] = {}  # site -> {probe, edges, fraction, left, right, tanh}
        self._cache_key: TraceKey | None = None
        self._cache: dict[int, tuple[dict, str]] = {}
        self._lazy = LazyRefresh(self, self.refresh)
        session.model_changed.connect(self._lazy.request)
        session.trace_changed.connect(self._lazy.request)
        session.computing_changed.connect(lambda: session.trace is None and self._lazy.request())
        session.selection_changed.connect(self._on_selection)
        self.refresh()

    def resizeEvent(self, event):
        super().resizeEvent(event)
        stacked = self.height() > 0.8 * self.width()
        if stacked != self.stacked:
            self.stacked = stacked
            layout = self.graphics.ci
            layout.removeItem(self.sat_plot)
            layout.addItem(self.sat_plot, row=1 if stacked else 0, col=0 if stacked else 1)
            grid = layout.layout  # stacked: the square saturation plot gets the larger share
            grid.setRowStretchFactor(0, 2 if stacked else 1)
            grid.setRowStretchFactor(1, 3 if stacked else 0)

    # -- items, made once per gate site ---------------------------------------------------------
    def _colour(self, site: str):
        if site not in GATE_COLOURS:
            GATE_COLOURS[site] = _EXTRA_COLOURS[len(GATE_COLOURS) % len(_EXTRA_COLOURS)]
        return GATE_COLOURS[site]

    def _hist_curve(self, site: str) -> pg.PlotDataItem:
        if site not in self._hist_curves:
            c = self._colour(site)
            style = Qt.DashLine if site in G.TANH_GATES else Qt.SolidLine
            item = pg.PlotDataItem(stepMode="center", pen=pg.mkPen(c, width=2, style=style),
                                   fillLevel=0, brush=pg.mkBrush(*c, 40))
            self.hist_plot.addItem(item)
            self._hist_curves[site] = item
        return self._hist_curves[site]

    def _scatter(self, site: str) -> pg.ScatterPlotItem:
        if site not in self._scatters:
            c = self._colour(site)
            item = pg.ScatterPlotItem(size=8, pen=pg.mkPen(0, 0, 0, 120), brush=pg.mkBrush(*c, 200), hoverable=True,
                                      tip="unit {data}: x={x:.2f}, y={y:.2f}".format)
            item.sigClicked.connect(self._on_points_clicked)
            self.sat_plot.addItem(item)
            self._scatters[site] = item
        return self._scatters[site]

    # -- data ----------------------------------------------------------------------------------
    def _layer_data(self, trace, layer: int) -> tuple[dict, str]:
        if self._cache_key is None or not self._cache_key.matches(self.session.model, trace):
            self._cache_key, self._cache = TraceKey(self.session.model, trace), {}
        if layer in self._cache:
            return self._cache[layer]
        data, notes = {}, []
        for site in layer_sites(self.session, layer):
            name = layer_probe(layer, site)
            if not G.is_gate_site(site) or name not in trace.arrays:
                continue
            values = G.as_units(trace[name])
            n, u = values.shape
            lo, hi = G.gate_range(site)
            tanh = site in G.TANH_GATES
            if not tanh and (float(values.min()) < lo - 1e-6 or float(values.max()) > hi + 1e-6):
                tanh = True  # not a sigmoid after all: show its distribution only
                lo, hi = float(values.min()), float(values.max())
            hs = G.row_sample(n, self.MAX_HISTOGRAM_VALUES // max(u, 1))
            edges, frac = G.histogram(values[hs], bins=self.BINS, range=(lo, hi))
            entry = {"probe": name, "edges": edges, "fraction": frac, "tanh": tanh, "units": u}
            if not tanh:
                ss = G.row_sample(n, self.MAX_SATURATION_VALUES // max(u, 1))
                entry["left"], entry["right"] = G.saturation(values[ss])
                if ss.step:
                    notes.append(f"{site}: saturation from one step in {ss.step}")
            data[site] = entry
        result = (data, "; ".join(notes))
        self._cache[layer] = result
        return result

    # -- refresh ---------------------------------------------------------------------------------
    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        """Bring a hidden view up to date now (before exporting it, say)."""
        self._lazy.flush()

    def refresh(self):
        """Recompute (from the cache when possible) and redraw everything."""
        self._lazy.pending = False
        self.data = {}
        self.layer = None
        msg = no_model_or_trace(self.session)
        if msg is None:
            self.layer = view_layer(self.session)
            if self.layer is None:
                msg = "This model has no recurrent layers, so no gates to show."
        if msg is None:
            self.data, notes = self._layer_data(self.session.trace, self.layer)
            if not self.data:
                sites = layer_sites(self.session, self.layer)
                if any(G.is_gate_site(s) for s in sites):
                    msg = f"The current trace did not record layer {self.layer}'s gates."
                else:
                    msg = (f"Layer {self.layer} has no gates: it records {', '.join(sites) or 'nothing'}. "
                           "The gate view needs a gated layer (LSTM, GRU, minGRU ...).")
        if msg is not None:
            self._clear_items()
            self.title.setText("")
            self.stack.show_message(msg)
            return
        self.stack.show_content()
        self._draw(notes)
        self._update_ring()

    def _clear_items(self):
        for item in self._hist_curves.values():
            item.setData([], [])
            item.hide()
        for item in self._scatters.values():
            item.setData([], [])
            item.hide()
        self._ring.setData([], [])

    def _draw(self, notes: str):
        self._clear_items()
        self.hist_legend.clear()
        self.sat_legend.clear()
        tanh_sites = []
        any_tanh = False
        for site, d in self.data.items():
            curve = self._hist_curve(site)
            curve.setData(d["edges"], d["fraction"])
            curve.show()
            if site in G.TANH_GATES:
                label = f"{site} (tanh, −1..1)"
            else:
                label = f"{site} (not in 0..1)" if d["tanh"] else site
            self.hist_legend.addItem(curve, label)
            if d["tanh"]:
                tanh_sites.append(site)
                any_tanh = True
                continue
            scatter = self._scatter(site)
            scatter.setData(d["left"], d["right"], data=np.arange(d["units"]))
            scatter.show()
            self.sat_legend.addItem(scatter, site)
        lo = min(float(d["edges"][0]) for d in self.data.values())
        hi = max(float(d["edges"][-1]) for d in self.data.values())
        self.hist_plot.setXRange(lo if any_tanh else 0.0, hi if any_tanh else 1.0, padding=0.02)
        trace = self.session.trace
        shown = ", ".join(self.data)
        text = f"Layer {self.layer}: gates {shown} over {trace.n_tokens} steps."
        if tanh_sites:
            text += (f" {', '.join(tanh_sites)} {'is a tanh' if len(tanh_sites) == 1 else 'are tanh'} "
                     "(range −1..1, dashed): in the histograms only, not in the saturation plot.")
        if notes:
            text += f" ({notes}.)"
        self.title.setText(text)

    def _on_selection(self):
        if not self.isVisible():
            self._lazy.pending = True
            return
        if self._lazy.pending or (self.session.model is not None and view_layer(self.session) != self.layer):
            self.refresh()
        else:
            self._update_ring()

    def _update_ring(self):
        """Ring the selected unit: in the selected gate's points, or in every gate's when the
        selected probe is another probe of this layer (h, c ...)."""
        s = self.session
        xs, ys = [], []
        spec = s.spec() if s.model is not None else None
        if self.data and spec is not None and spec.layer == self.layer and s.units:
            u = s.units[0]
            sites = [spec.site] if spec.site in self.data and not self.data[spec.site]["tanh"] else list(self.data)
            for site in sites:
                d = self.data[site]
                if not d["tanh"] and u < d["units"]:
                    xs.append(d["left"][u])
                    ys.append(d["right"][u])
        self._ring.setData(xs, ys)

    # -- clicks -----------------------------------------------------------------------------------
    def _on_points_clicked(self, item, points, ev=None):
        if len(points) == 0:
            return
        site = next((k for k, v in self._scatters.items() if v is item), None)
        if site is None or site not in self.data:
            return
        self.select_point(site, int(points[0].data()))

    def select_point(self, site: str, unit: int):
        """What a click on a point does: select that gate probe and unit."""
        probe = self.data[site]["probe"]
        if self.session.probe != probe:
            self.session.select_probe(probe)
        self.session.select_unit(unit)
