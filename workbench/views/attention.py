"""Attention map: for the selected layer, how much each earlier step (column) still contributes
at each step (row), around the cursor, with the cursor's row marked.

Recurrent layers have no attention weights, but their state is an exact weighted sum over the
past: an LSTM's cell path (``alpha_ij = i_j prod f``), a GRU's update path (``(1 - z_j) prod z``,
for the part of ``h`` written through the candidate), and the ``attn`` probe that state-space
models record.  The map shows the mean of |alpha| over units, or one unit's alpha."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from engine.analysis.cell_attention import cell_attention
from engine.analysis.implicit_attention import contribution_attention
from engine.probes import layer_probe

from ._common import LazyRefresh, MessageStack, no_model_or_trace, view_layer


def attention_source(session, layer: int):
    """(kind, gate_i-like, gate_f-like) for the layer, or ("probe", name, None) for a recorded
    ``attn`` probe; None when the layer has no implicit attention the workbench can show."""
    tr = session.trace
    attn = layer_probe(layer, "attn")
    if attn in tr.arrays:
        return "probe", attn, None
    gi, gf, gz = (layer_probe(layer, s) for s in ("gate_i", "gate_f", "gate_z"))
    if gi in tr.arrays and gf in tr.arrays:
        return "lstm", tr[gi], tr[gf]
    if gz in tr.arrays:
        z = tr[gz]
        return "gru", 1.0 - z.astype(np.float64), z
    return None


def can_weight_by_output(session, layer: int) -> bool:
    """Whether the output-weighted implicit attention can be computed for the layer: a model
    that exposes ``out_proj_weight`` (Mamba) and a trace holding the sites it is made from."""
    if not hasattr(session.model, "out_proj_weight"):
        return False
    return all(layer_probe(layer, site) in session.trace.arrays for site in ("dt", "B", "C", "conv", "gate"))


class AttentionView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._lazy = LazyRefresh(self, self.refresh)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "key step j")
        self.plot_item.setLabel("left", "query step i")
        self.plot_item.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot_item.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get("viridis"), interactive=False, width=12)
        self.colorbar.setImageItem(self.image, insert_in=self.plot_item)
        self.query_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((255, 80, 80), width=1))
        self.plot_item.addItem(self.query_line)
        self.size = QSpinBox()
        self.size.setRange(16, 1024)
        self.size.setValue(128)
        self.size.setSuffix(" steps")
        self.one_unit = QCheckBox("selected unit only")
        self.weighted = QCheckBox("weighted by what reaches the output")
        self.weighted.setToolTip("Mamba layers: sum over channels of |alpha_ij| |u_j| |gate_i| ||out_proj column||, "
                                 "how much of step j's input reaches the layer's output at step i "
                                 "(engine.analysis.implicit_attention.contribution_attention)")
        self.caption = QLabel(" ")
        self.caption.setWordWrap(True)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("window"))
        controls.addWidget(self.size)
        controls.addWidget(self.one_unit)
        controls.addWidget(self.weighted)
        controls.addStretch(1)
        inner = QWidget()
        inner_layout = QVBoxLayout(inner)
        inner_layout.setContentsMargins(0, 0, 0, 0)
        inner_layout.addLayout(controls)
        inner_layout.addWidget(self.caption)
        inner_layout.addWidget(self.plot, 1)
        self.stack = MessageStack(inner)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.stack)
        self.window_rows = (0, 0)
        self.values: np.ndarray | None = None
        self.size.valueChanged.connect(lambda _v: self._lazy.request())
        self.one_unit.toggled.connect(lambda _b: self._lazy.request())
        self.weighted.toggled.connect(lambda _b: self._lazy.request())
        self.plot.scene().sigMouseClicked.connect(self._click)
        session.trace_changed.connect(self._lazy.request)
        session.computing_changed.connect(lambda: session.trace is None and self._lazy.request())
        session.selection_changed.connect(self._lazy.request)
        session.model_changed.connect(self._model_changed)

    def _model_changed(self):
        """A model's look-at entry may ask for the output weighting (the recall model's card does)."""
        look = self.session.look_at
        if look is not None and "attention_weighted" in look.options:
            self.weighted.setChecked(look.options["attention_weighted"])

    def flush(self):
        self._lazy.flush()

    def refresh(self):
        s = self.session
        msg = no_model_or_trace(s)
        if msg is not None:
            self.stack.show_message(msg)
            return
        layer = view_layer(s)
        source = attention_source(s, layer) if layer is not None else None
        if source is None:
            self.stack.show_message(f"Layer {layer} records no gates from which an implicit attention follows "
                                    "(LSTM, GRU and state-space layers have one).")
            return
        seq = int(np.searchsorted(s.trace.offsets, s.step, side="right") - 1)
        sl = s.trace.sequence_slice(seq)
        n, step = sl.stop - sl.start, s.step - sl.start
        size = min(self.size.value(), n)
        start = max(0, min(step - size // 2, n - size))
        rows = cols = (start, start + size)
        kind = source[0]
        can_weight = kind == "probe" and can_weight_by_output(s, layer)
        self.weighted.setVisible(can_weight)
        self.one_unit.setVisible(kind != "probe")
        if can_weight and self.weighted.isChecked():
            values = contribution_attention(s.trace, s.model, layer, rows, cols, sequence=seq)
            what = "sum over channels of |alpha_ij u_j gate_i| x ||out_proj column||: what reaches the output"
        elif kind == "probe":
            recorded = s.trace[source[1]][sl]
            window = getattr(s.model, "attention_window", None)
            c0 = window.cols[0] if window is not None else 0
            values = recorded[start:start + size, max(0, start - c0):max(0, start - c0) + size]
            what = "mean |alpha| over channels, as recorded (probe attn; blank outside the model's attention window)"
        else:
            gi, gf = source[1][sl], source[2][sl]
            spec = s.trace.specs.get(layer_probe(layer, "gate_i" if kind == "lstm" else "gate_z"))
            width = gi.shape[1] // (spec.directions if spec is not None else 1)
            gi, gf = gi[:, :width], gf[:, :width]  # the forward direction
            units = None
            unit = s.units[0] if s.units else 0
            if self.one_unit.isChecked() and unit < width:
                units = [unit]
            values = cell_attention(gi, gf, rows, cols, units=units, reduce="mean_abs")
            path = "cell path i_j·∏f" if kind == "lstm" else "update path (1−z_j)·∏z"
            what = f"{path}, " + (f"unit {unit}" if units else "mean |alpha| over units")
        self.values = values
        self.window_rows = rows
        finite = values[np.isfinite(values)]  # a recorded attn probe is NaN outside its window
        top = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        top = top if top > 0 else 1.0
        self.image.setImage(values.astype(np.float32), levels=(0.0, top))
        self.image.setRect(pg.QtCore.QRectF(cols[0], rows[0], values.shape[1], values.shape[0]))
        self.colorbar.setLevels((0.0, top))
        self.query_line.setPos(step + 0.5)
        self.caption.setText(f"layer {layer}: {what}; steps {rows[0]}–{rows[1] - 1} of sequence {seq}")
        self.stack.show_content()

    def _click(self, event):
        if event.button() != Qt.LeftButton or self.values is None:
            return
        p = self.plot_item.vb.mapSceneToView(event.scenePos())
        i = int(np.floor(p.y()))
        if self.window_rows[0] <= i < self.window_rows[1]:
            seq = int(np.searchsorted(self.session.trace.offsets, self.session.step, side="right") - 1)
            self.session.set_step(int(self.session.trace.offsets[seq]) + i)
