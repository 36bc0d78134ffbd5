"""Statistics view: what the units of the selected probe do over the whole input, how saturated
each layer's gates are, and the layer state's norm and effective rank along the position.

Top: each unit's mean ± std (``engine.analysis.unit_stats``), dead units (std <= 1e-4) in grey
and saturated ones (>= 90 % of steps within 2 % of a bound of a bounded probe) in red; clicking
a unit selects it.  Middle: per gate probe, the fraction of values in the lowest and in the
highest tenth of the gate's range.  Bottom: the mean norm of the layer's state at each position
and its effective rank in windows of positions (state collapse on long inputs shows as a falling
rank).  Computed on the trace without interventions, off the GUI thread with Cancel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from engine.analysis import unit_stats as U
from engine.probes import layer_probe, parse_probe

from ._analysis import AnalysisJob, csv_button, write_csv
from ._common import LazyRefresh, MessageStack, TraceKey, layer_sites, legend_below, no_model_or_trace, wrapped_label

COLOURS = {"unit": (90, 160, 255), "dead": (150, 150, 150), "saturated": (240, 60, 60)}


@dataclass
class StatsResult:
    stats: U.UnitStats
    gates: list
    profile: U.StateProfile | None


def compute(trace, probe: str, state: str | None, should_stop=None, progress=None) -> StatsResult:
    stats = U.unit_stats(trace, probe)
    if progress is not None:
        progress(1, 3)
    gates = U.gate_saturation(trace)
    if progress is not None:
        progress(2, 3)
    profile = U.state_profile(trace, state) if state is not None and state in trace.arrays else None
    return StatsResult(stats, gates, profile)


class UnitStatsView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.job = AnalysisJob(session, "unit-stats", self)
        self.job.done.connect(self._on_result)
        self.job.failed.connect(self._on_failed)
        self.title = wrapped_label()
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(csv_button(self, "unit_stats.csv"))
        self.graphics = pg.GraphicsLayoutWidget()
        self.plot_item = self.graphics.ci
        self.unit_plot = self.graphics.addPlot(row=0, col=0, colspan=2)
        self.unit_plot.setLabel("bottom", "unit")
        self.unit_plot.setLabel("left", "mean ± std")
        self.unit_plot.showGrid(x=True, y=True, alpha=0.15)
        self.errors = pg.ErrorBarItem(pen=pg.mkPen((140, 140, 140), width=1))
        self.unit_plot.addItem(self.errors)
        self.points = {k: pg.ScatterPlotItem(size=7, pen=None, brush=pg.mkBrush(*c)) for k, c in COLOURS.items()}
        for item in self.points.values():
            item.sigClicked.connect(self._on_unit_clicked)
            self.unit_plot.addItem(item)
        self.gate_plot = self.graphics.addPlot(row=1, col=0, colspan=2)
        self.gate_plot.setLabel("left", "fraction of values")
        self.gate_plot.setYRange(0, 1)
        self.gate_low = pg.BarGraphItem(x=[], height=[], width=0.38, brush=pg.mkBrush(70, 130, 230))
        self.gate_high = pg.BarGraphItem(x=[], height=[], width=0.38, brush=pg.mkBrush(230, 80, 60))
        self.gate_plot.addItem(self.gate_low)
        self.gate_plot.addItem(self.gate_high)
        legend = legend_below(self.gate_plot, columns=2)
        legend.addItem(self.gate_low, "lowest tenth")
        legend.addItem(self.gate_high, "highest tenth")
        self.norm_plot = self.graphics.addPlot(row=2, col=0)
        self.norm_plot.setLabel("bottom", "position")
        self.norm_plot.setLabel("left", "mean norm")
        self.norm_plot.showGrid(x=True, y=True, alpha=0.15)
        self.norm_curve = self.norm_plot.plot(pen=pg.mkPen((90, 200, 120), width=1.5))
        self.rank_plot = self.graphics.addPlot(row=2, col=1)
        self.rank_plot.setLabel("bottom", "position")
        self.rank_plot.setLabel("left", "effective rank")
        self.rank_plot.showGrid(x=True, y=True, alpha=0.15)
        self.rank_curve = self.rank_plot.plot(pen=pg.mkPen((230, 170, 40), width=1.5), symbol="o", symbolSize=5,
                                              symbolBrush=(230, 170, 40))
        self.stack = MessageStack(self.graphics)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.job.row)
        layout.addWidget(self.stack, 1)
        self.result: StatsResult | None = None
        self._key = None
        self._lazy = LazyRefresh(self, self.refresh)
        session.model_changed.connect(self._lazy.request)
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._on_selection)
        self.refresh()

    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        self._lazy.flush()

    def _state_probe(self, layer: int | None) -> str | None:
        if layer is None:
            return None
        sites = layer_sites(self.session, layer)
        for site in U.STATE_SITES:
            if site in sites:
                return layer_probe(layer, site)
        return None

    def _on_selection(self):
        s = self.session
        if self._key is not None and self._key[1] != s.probe:
            self._lazy.request()

    def refresh(self):
        self._lazy.pending = False
        s = self.session
        msg = no_model_or_trace(s)
        clean = None
        if msg is None:
            clean = s.clean_trace if s.clean_trace is not None else s.trace
            if s.probe not in clean.arrays:
                msg = f"The current trace did not record the selected probe {s.probe}."
        if msg is not None:
            self.job.cancel()
            self.result, self._key = None, None
            self.stack.show_message(msg)
            return
        layer, _ = parse_probe(s.probe)
        state = self._state_probe(layer)
        key = (TraceKey(s.model, clean), s.probe)
        if self._key is not None and self._key[1:] == key[1:] and self._key[0].matches(s.model, clean):
            return
        self._key = key
        probe = s.probe
        self.job.start(lambda should_stop, progress: compute(clean, probe, state, should_stop, progress),
                       f"Statistics of {probe}…")
        if self.result is None:
            self.stack.show_message("Computing…")

    def _on_failed(self, message: str):
        self._key, self.result = None, None
        self.stack.show_message(message)

    def _on_result(self, result: StatsResult):
        self.result = result
        self._draw()

    def _draw(self):
        r = self.result
        st = r.stats
        self.stack.show_content()
        units = np.arange(st.n_units)
        self.errors.setData(x=units, y=st.mean, height=2 * st.std)
        dead = st.dead
        sat = st.saturated if st.saturated is not None else np.zeros(st.n_units, dtype=bool)
        plain = ~dead & ~sat
        for name, mask in (("unit", plain), ("dead", dead), ("saturated", sat & ~dead)):
            self.points[name].setData(units[mask], st.mean[mask], data=units[mask])
        rng = f" (range {st.value_range[0]:g}..{st.value_range[1]:g})" if st.value_range else ""
        n_sat = int(sat.sum()) if st.saturated is not None else None
        self.unit_plot.setTitle(f"{st.probe}: {st.n_units} units, {st.count:,} steps")
        sat_text = f"{n_sat} saturated (red; >= 90 % of steps within 2 % of a bound{rng})" if n_sat is not None \
            else "saturation: the probe has no known bounds"
        kind = f"; rank of {self.result.profile.rank_kind}" if self.result.profile is not None else ""
        self.title.setText(f"{int(dead.sum())} dead (grey; std <= 1e-4), {sat_text}; "
                           f"mean sparsity {float(st.sparsity.mean()):.3f} (|x| <= 0.01){kind}")
        if r.gates:
            x = np.arange(len(r.gates))
            self.gate_low.setOpts(x=x - 0.2, height=[g.left for g in r.gates])
            self.gate_high.setOpts(x=x + 0.2, height=[g.right for g in r.gates])
            multi = len({g.layer for g in r.gates}) > 1
            self.gate_plot.getAxis("bottom").setTicks(
                [[(i, f"{g.layer}.{g.site}" if multi else g.site) for i, g in enumerate(r.gates)]])
            self.gate_plot.setXRange(-0.6, len(r.gates) - 0.4)
            self.gate_plot.setTitle("Gate saturation per layer")
        else:
            self.gate_low.setOpts(x=[], height=[])
            self.gate_high.setOpts(x=[], height=[])
            self.gate_plot.getAxis("bottom").setTicks([[]])
            self.gate_plot.setTitle("Gate saturation: no gates")
        p = r.profile
        if p is not None:
            self.norm_curve.setData(p.positions, p.norm)
            ok = np.isfinite(p.effective_rank)
            self.rank_curve.setData(p.rank_start[ok], p.effective_rank[ok])
            self.norm_plot.setTitle(f"{p.probe}: norm")
            self.rank_plot.setTitle(f"effective rank, windows of {p.window}" if not p.note else "effective rank: "
                                    "too many units")
        else:
            self.norm_curve.setData([], [])
            self.rank_curve.setData([], [])
            self.norm_plot.setTitle("no layer state recorded")
            self.rank_plot.setTitle("")

    def _on_unit_clicked(self, _item, points, ev=None):
        if len(points) and self.result is not None and self.result.stats.probe == self.session.probe:
            self.session.select_unit(int(points[0].data()))

    def export_csv(self, path):
        if self.result is None:
            from ..export import ExportError

            raise ExportError("nothing to export yet: the statistics are not computed")
        st = self.result.stats
        sat = st.saturated_fraction if st.saturated_fraction is not None else np.full(st.n_units, np.nan)
        rows = [(st.probe, u, float(st.mean[u]), float(st.std[u]), float(st.min[u]), float(st.max[u]),
                 float(st.sparsity[u]), bool(st.dead[u]), float(sat[u])) for u in range(st.n_units)]
        return write_csv(path, ["probe", "unit", "mean", "std", "min", "max", "sparsity", "dead",
                                "saturated_fraction"], rows)
