"""Timescales view: how many steps each layer remembers, as a histogram per layer on a log axis.

"decay spectrum": ``tau = -1/<log a_t>`` of every unit, channel or head from the layer's own
decays (``engine.analysis.decay_spectrum``: LSTM forget gates, GRU update gates, Mamba's
``exp(dt A)``, LRU's ``|lambda|`` ...), the gates as recorded on the current input.
"autocorrelation": the autocorrelation decay time of every unit of each layer's state
(``engine.analysis.timescales``), for any family.  One curve per layer (counts per log-spaced
bin of tau, in steps); entries that never decay are counted in the legend.

Computed without interventions, off the GUI thread with progress and Cancel (the model is run
again for the probes the spectrum needs when the current trace lacks them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

import engine
from engine.analysis import decay_spectrum as DS
from engine.analysis import timescales as TS

from ._analysis import AnalysisJob, csv_button, write_csv
from ._common import LazyRefresh, MessageStack, TraceKey, legend_below, no_model_or_trace, wrapped_label

MODES = ("decay spectrum", "autocorrelation")
BINS = 24
STATE_SITES = ("c", "h", "state")


@dataclass
class LayerTimescales:
    layer: int
    tau: np.ndarray
    source: str
    entries: str


def _state_probes(model) -> list[str]:
    names = {s.name for s in model.probe_specs()}
    out = []
    for k in range(model.num_layers):
        hit = next((f"layers.{k}.{s}" for s in STATE_SITES if f"layers.{k}.{s}" in names), None)
        if hit is not None:
            out.append(hit)
    return out


def compute(model, trace, inputs, mode: str, should_stop=None, progress=None) -> list[LayerTimescales]:
    """The timescales of every layer (runs in the worker thread)."""
    needed = DS.needed_probes(model) if mode == MODES[0] else _state_probes(model)
    if not set(needed) <= set(trace.arrays):
        trace = engine.run(model, inputs, probes=needed or None, should_stop=should_stop, progress=progress,
                           initial_state=trace.initial_state or None)  # from where the shown run started
    if mode == MODES[0]:
        return [LayerTimescales(s.layer, s.tau, s.source, s.entries) for s in DS.decay_spectrum(model, trace)]
    out = []
    for n, name in enumerate(needed):
        if should_stop is not None and should_stop():
            raise engine.Cancelled("cancelled")
        tau = TS.autocorrelation_timescales(trace[name], trace.offsets)
        out.append(LayerTimescales(int(name.split(".")[1]), tau, f"autocorrelation of {name}", "unit"))
        if progress is not None:
            progress(n + 1, len(needed))
    return out


class TimescalesView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.setToolTip("decay spectrum: tau = -1/<log a> from the layer's own decays; autocorrelation: the "
                             "decay time of each state unit's autocorrelation")
        self.job = AnalysisJob(session, "timescales", self)
        self.job.done.connect(self._on_result)
        self.job.failed.connect(self._on_failed)
        top = QHBoxLayout()
        top.addWidget(QLabel("timescales from"))
        top.addWidget(self.mode)
        top.addStretch(1)
        top.addWidget(csv_button(self, "timescales.csv"))
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLogMode(x=True, y=False)
        self.plot_item.showGrid(x=True, y=True, alpha=0.15)
        self.plot_item.setLabel("bottom", "timescale τ (steps)")
        self.plot_item.setLabel("left", "count")
        self.legend = legend_below(self.plot_item, columns=1)
        self.info = wrapped_label()
        self.stack = MessageStack(self.plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.job.row)
        layout.addWidget(self.info)
        layout.addWidget(self.stack, 1)
        self.result: list[LayerTimescales] | None = None
        self.histograms: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.curves: list[pg.PlotDataItem] = []
        self._key = None
        self._lazy = LazyRefresh(self, self.refresh)
        self.mode.currentIndexChanged.connect(lambda _i: self._lazy.request())
        session.model_changed.connect(self._on_model)
        session.trace_changed.connect(self._lazy.request)
        self.refresh()

    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        self._lazy.flush()

    def _on_model(self):
        self.result, self._key = None, None
        self._lazy.request()

    def refresh(self):
        self._lazy.pending = False
        s = self.session
        msg = no_model_or_trace(s)
        mode = MODES[self.mode.currentIndex()]
        if msg is None and mode == MODES[0]:
            try:
                DS.needed_probes(s.model)
            except DS.NoDecay as exc:
                msg = f"{exc}. Choose 'autocorrelation' above."
        if msg is None and mode == MODES[1] and not _state_probes(s.model):
            msg = "This model records no layer state (c, h or state) to take autocorrelations of."
        if msg is not None:
            self.job.cancel()
            self.result, self._key = None, None
            self.stack.show_message(msg)
            return
        clean = s.clean_trace if s.clean_trace is not None else s.trace
        key = (TraceKey(s.model, clean), mode)
        if self._key is not None and self._key[1:] == key[1:] and self._key[0].matches(s.model, clean):
            return
        self._key = key
        model, inputs = s.model, s.current_input()
        self.job.start(lambda should_stop, progress: compute(model, clean, inputs, mode, should_stop, progress),
                       f"Timescales ({mode})…")
        if self.result is None:
            self.stack.show_message("Computing…")

    def _on_failed(self, message: str):
        self._key, self.result = None, None
        self.stack.show_message(message)

    def _on_result(self, result: list[LayerTimescales]):
        self.result = result
        self._draw()

    def _draw(self):
        for c in self.curves:
            self.plot_item.removeItem(c)
        self.curves, self.histograms = [], []
        self.legend.clear()
        if not self.result:
            self.stack.show_message("No layer of this model has a timescale to show.")
            return
        self.stack.show_content()
        finite = np.concatenate([r.tau[np.isfinite(r.tau) & (r.tau > 0)] for r in self.result])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (1.0, 10.0)
        notes = []
        for n, r in enumerate(self.result):
            edges, counts, n_inf = TS.log_histogram(r.tau, bins=BINS, lo=lo, hi=hi)
            self.histograms.append((edges, counts, n_inf))
            colour = pg.intColor(n, hues=max(len(self.result), 3), values=1, maxValue=255, minValue=200)
            curve = pg.PlotDataItem(edges, counts, stepMode="center", pen=pg.mkPen(colour, width=2),
                                    fillLevel=0, brush=pg.mkBrush(colour.red(), colour.green(), colour.blue(), 40))
            self.plot_item.addItem(curve)
            self.curves.append(curve)
            extra = f", {n_inf} never decay" if n_inf else ""
            med = np.median(r.tau[np.isfinite(r.tau)]) if np.isfinite(r.tau).any() else float("nan")
            self.legend.addItem(curve, f"layer {r.layer}: {r.tau.size} {r.entries}s, median {med:.3g}{extra}"
                                if len(self.result) <= 4 else f"layer {r.layer} (median {med:.3g})")
            notes.append(r.source)
        self.plot_item.setTitle("Timescales per layer")
        sources = list(dict.fromkeys(notes))
        self.info.setText("τ from " + "; ".join(sources) + " — on the input without interventions")

    def export_csv(self, path):
        if not self.result:
            from ..export import ExportError

            raise ExportError("nothing to export yet: the timescales are not computed")
        rows = [(r.layer, i, float(t), r.entries, r.source) for r in self.result for i, t in enumerate(r.tau)]
        return write_csv(path, ["layer", "entry", "tau_steps", "entry_kind", "source"], rows)
