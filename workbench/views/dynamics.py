"""Dynamics view: how a layer's state update behaves along the input, and where it settles.

Top: the spectral radius of the state update's Jacobian ``dF/ds`` at every step the run visited
(above the dashed line at 1 the update stretches some direction; near 1 it keeps one), with the
cursor's step marked; clicking the curve moves the cursor.  Bottom: the visited states on their
first two principal components (``engine.analysis.projection.pca``), with the fixed and slow
points of the update under a constant input (``engine.analysis.fixed_points``: the mean input,
zero, ``step:T`` or ``token:X``) drawn on the same axes, marked by their stability.

Computed on the trace without interventions (the model's own dynamics), off the GUI thread with
progress and Cancel (``AnalysisJob``); recomputed only when the input, the layer or the constant
input changes.  Exports: the plots (File ▸ Export view) and the numbers (Export CSV…).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

import engine
from engine.analysis import fixed_points as FP
from engine.analysis import jacobian as JA
from engine.analysis import projection as P
from engine.analysis import state_step as SS

from ._analysis import AnalysisJob, csv_button, write_csv
from ._common import LazyRefresh, MessageStack, TraceKey, legend_below, no_model_or_trace, view_layer, wrapped_label

MARKERS = {  # stability -> (symbol, colour)
    "stable": ("o", (40, 190, 80)), "marginal": ("s", (40, 110, 220)),
    "saddle": ("t", (240, 140, 20)), "unstable": ("x", (220, 30, 30)),
}
MAX_STEPS = 400  # Jacobians examined along the input (fewer for large states: see budget)
MAX_STARTS = 128  # starting states of the fixed-point search


def budget(state_size: int, most: int, cubes: float, least: int = 16) -> int:
    """How many d x d eigen-decompositions (or searches) to afford: ``cubes / d^3``, between
    ``least`` and ``most`` (a 512-wide LSTM state gets the least, a 64-wide GRU the most)."""
    return int(min(most, max(least, cubes / max(state_size, 1) ** 3)))


@dataclass
class DynamicsResult:
    layer: int
    constant: str
    steps: np.ndarray  # global token indices
    radius: np.ndarray
    coords: np.ndarray  # [tokens, 2] the visited states on PC1, PC2
    ratio: np.ndarray
    offsets: np.ndarray
    points: list  # FixedPoint
    point_coords: np.ndarray  # [points, 2]
    lowest_q: float  # the lowest speed the search reached


def compute(model, trace, inputs, layer: int, constant: str, should_stop=None, progress=None) -> DynamicsResult:
    """Everything the view shows (runs in the worker thread)."""
    step = SS.state_step(model, layer)
    if not set(step.needed()) <= set(trace.arrays):
        trace = engine.run(model, inputs, probes=step.needed(), should_stop=should_stop,
                           initial_state=trace.initial_state or None)  # from where the shown run started
    afford = MAX_STEPS if step.diagonal else budget(step.state_size, MAX_STEPS, 4e9)  # diagonal: no eig
    per_seq = max(8, afford // trace.n_sequences)
    steps, radius = [], []
    for s in range(trace.n_sequences):
        if trace.offsets[s + 1] == trace.offsets[s]:
            continue
        sp = JA.spectra_along(step, trace, s, max_steps=per_seq, should_stop=should_stop)
        steps.append(sp.steps + trace.offsets[s])
        radius.append(sp.spectral_radius)
        if progress is not None:
            progress(s + 1, trace.n_sequences + 2)
    states = step.states(trace)
    pca = P.pca(states, k=2)
    u = FP.constant_input(step, trace, model, constant)
    starts = states[JA.choose_steps(len(states), budget(step.state_size, MAX_STARTS, 1e9, least=8))]
    res = FP.find_fixed_points(step, u, starts, max_iter=100 if step.state_size <= 256 else 40,
                               should_stop=should_stop)
    pts = np.array([p.state for p in res.points]).reshape(-1, step.state_size)
    pc = P.project(pts, pca.mean, pca.components) if len(pts) else np.zeros((0, pca.k))
    coords, pc = _two_columns(pca.coords), _two_columns(pc)
    ratio = np.pad(pca.explained_variance_ratio, (0, 2))[:2]
    return DynamicsResult(layer, constant, np.concatenate(steps), np.concatenate(radius), coords, ratio,
                          np.asarray(trace.offsets), res.points, pc, res.settings.get("lowest_q", float("nan")))


def _two_columns(a):
    return a if a.shape[1] >= 2 else np.column_stack([a, np.zeros(len(a))])


class DynamicsView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.layer = QSpinBox()
        self.layer.setPrefix("layer ")
        self.constant = QComboBox()
        self.constant.setEditable(True)
        self.constant.addItems(["mean", "zero"])
        self.constant.setToolTip("the constant input of the fixed-point search: mean (of the step inputs), zero, "
                                 "step:T (the input of step T) or token:X (layer 0 of token models); Enter to search")
        self.job = AnalysisJob(session, "dynamics", self)
        self.job.done.connect(self._on_result)
        self.job.failed.connect(self._on_failed)
        top = QHBoxLayout()
        top.addWidget(self.layer)
        top.addWidget(QLabel("constant input"))
        top.addWidget(self.constant, 1)
        top.addWidget(csv_button(self, "dynamics.csv"))

        self.graphics = pg.GraphicsLayoutWidget()
        self.plot_item = self.graphics.ci  # what File ▸ Export view draws
        self.radius_plot = self.graphics.addPlot(row=0, col=0)
        self.radius_plot.setLabel("bottom", "step")
        self.radius_plot.setLabel("left", "spectral radius |λ|max")
        self.radius_plot.showGrid(x=True, y=True, alpha=0.15)
        self.radius_plot.addItem(pg.InfiniteLine(1.0, angle=0, pen=pg.mkPen((120, 120, 120), style=Qt.DashLine)))
        self.radius_curve = pg.PlotDataItem(pen=pg.mkPen((40, 80, 200), width=1.5))
        self.radius_curve.setCurveClickable(True)
        self.radius_curve.sigClicked.connect(self._on_radius_clicked)
        self.radius_plot.addItem(self.radius_curve)
        self.cursor = pg.InfiniteLine(0, angle=90, pen=pg.mkPen((255, 40, 40), width=1))
        self.radius_plot.addItem(self.cursor)
        self.pc_plot = self.graphics.addPlot(row=1, col=0)
        self.pc_plot.showGrid(x=True, y=True, alpha=0.15)
        self.legend = legend_below(self.pc_plot, columns=3)
        self.trajectory = pg.PlotCurveItem(pen=pg.mkPen((160, 160, 160, 160), width=1))
        self.pc_plot.addItem(self.trajectory)
        self.point_items = {}
        for stability, (symbol, colour) in MARKERS.items():
            item = pg.ScatterPlotItem(size=14, symbol=symbol, pen=pg.mkPen(255, 255, 255), brush=pg.mkBrush(*colour))
            item.setZValue(10)
            self.pc_plot.addItem(item)
            self.point_items[stability] = item
        self.graphics.ci.layout.setRowStretchFactor(0, 2)
        self.graphics.ci.layout.setRowStretchFactor(1, 3)
        self.info = wrapped_label()
        self.stack = MessageStack(self.graphics)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.job.row)
        layout.addWidget(self.info)
        layout.addWidget(self.stack, 1)

        self.result: DynamicsResult | None = None
        self._key = None  # what the result (or the running job) was computed from
        self._lazy = LazyRefresh(self, self.refresh)
        self.layer.valueChanged.connect(lambda _v: self._lazy.request())
        self.constant.activated.connect(lambda _i: self._lazy.request())
        self.constant.lineEdit().returnPressed.connect(self._lazy.request)
        session.model_changed.connect(self._on_model)
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._move_cursor)
        self._on_model()

    # -- state ------------------------------------------------------------------------------------
    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        self._lazy.flush()

    def _on_model(self):
        s = self.session
        self.result, self._key = None, None
        self.layer.blockSignals(True)
        if s.model is not None:
            self.layer.setRange(0, max(0, s.model.num_layers - 1))
            self.layer.setValue(view_layer(s) or 0)
        self.layer.blockSignals(False)
        self._lazy.request()

    def refresh(self):
        self._lazy.pending = False
        s = self.session
        msg = no_model_or_trace(s)
        if msg is None:
            try:
                SS.state_step(s.model, self.layer.value())
            except SS.NoStateStep as exc:
                msg = str(exc)
        if msg is not None:
            self.job.cancel()
            self.result, self._key = None, None
            self.stack.show_message(msg)
            return
        clean = s.clean_trace if s.clean_trace is not None else s.trace
        constant = self.constant.currentText().strip() or "mean"
        key = (TraceKey(s.model, clean), self.layer.value(), constant)
        if self._key is not None and self._key[1:] == key[1:] and self._key[0].matches(s.model, clean):
            self._draw()
            return
        self._key = key
        model, inputs, layer = s.model, s.current_input(), self.layer.value()
        self.job.start(lambda should_stop, progress: compute(model, clean, inputs, layer, constant, should_stop,
                                                             progress),
                       f"Jacobians and fixed points of layer {layer}…")
        if self.result is None:
            self.stack.show_message("Computing…")

    def _on_result(self, result: DynamicsResult):
        self.result = result
        self._draw()

    def _on_failed(self, message: str):
        self._key = None
        self.result = None
        self.stack.show_message(message)

    # -- drawing ----------------------------------------------------------------------------------
    def _draw(self):
        r = self.result
        if r is None:
            return
        self.stack.show_content()
        self.radius_plot.setTitle(f"Spectral radius of dF/ds, layer {r.layer}")
        connect = np.ones(len(r.steps), dtype=bool)
        seq = np.searchsorted(r.offsets, r.steps, side="right")
        connect[:-1] = seq[:-1] == seq[1:]
        self.radius_curve.setData(r.steps, r.radius, connect=connect)
        n = len(r.coords)
        tconnect = np.ones(n, dtype=bool)
        tseq = np.searchsorted(r.offsets, np.arange(n), side="right")
        tconnect[:-1] = tseq[:-1] == tseq[1:]
        self.trajectory.setData(r.coords[:, 0], r.coords[:, 1], connect=tconnect)
        self.legend.clear()
        self.legend.addItem(self.trajectory, "visited states")
        for stability, item in self.point_items.items():
            idx = [k for k, p in enumerate(r.points) if p.stability == stability]
            item.setData(r.point_coords[idx, 0], r.point_coords[idx, 1]) if idx else item.setData([], [])
            if idx:
                kinds = {r.points[k].kind for k in idx}
                self.legend.addItem(item, f"{stability} {'/'.join(sorted(kinds))} ({len(idx)})")
        self.pc_plot.setTitle(f"Fixed points, input '{r.constant}', on the states' PCs")
        self.pc_plot.setLabel("bottom", f"PC1 ({100 * r.ratio[0]:.1f}% of variance)")
        self.pc_plot.setLabel("left", f"PC2 ({100 * r.ratio[1]:.1f}% of variance)")
        counts = {}
        for p in r.points:
            counts[p.stability] = counts.get(p.stability, 0) + 1
        found = ", ".join(f"{v} {k}" for k, v in counts.items()) or \
            f"none (the lowest q reached was {r.lowest_q:.2g}, above the slow-point limit {FP.Q_SLOW:g})"
        self.info.setText(f"{len(r.steps)} steps examined; spectral radius {r.radius.min():.3f}–{r.radius.max():.3f}, "
                          f"above 1 at {int(np.count_nonzero(r.radius > 1))}; fixed/slow points: {found} "
                          "(computed without interventions)")
        self._move_cursor()

    def _move_cursor(self):
        self.cursor.setValue(self.session.step)

    def _on_radius_clicked(self, _item, ev=None):
        if ev is not None and self.result is not None and len(self.result.steps):
            x = self.radius_plot.vb.mapSceneToView(ev.scenePos()).x()
            k = int(np.argmin(np.abs(self.result.steps - x)))
            self.session.set_step(int(self.result.steps[k]))

    # -- export -----------------------------------------------------------------------------------
    def export_csv(self, path):
        r = self.result
        if r is None:
            from ..export import ExportError

            raise ExportError("nothing to export yet: the dynamics are not computed")
        rows = [("step", int(t), float(x), "", "", "", "", "") for t, x in zip(r.steps, r.radius)]
        rows += [(f"{p.kind} point", k, float(np.abs(p.eigenvalues[0])), p.stability, p.n_unstable, p.q,
                  float(r.point_coords[k, 0]), float(r.point_coords[k, 1])) for k, p in enumerate(r.points)]
        return write_csv(path, ["row", "index", "spectral_radius", "stability", "unstable_directions", "q", "pc1",
                                "pc2"], rows)
