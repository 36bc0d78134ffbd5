"""Attribution: which earlier tokens (and states) made an output, as a heat strip over the text.

The output is the logit of a token at the cursor's step, or the selected unit of the selected
probe at that step.  Methods: integrated gradients (from the zero embedding, ``steps`` nodes),
gradient x input (with a row per layer for gradient x state) or activation patching (the output's
change when each earlier step's state is zeroed).  It runs on the worker thread (progress,
Cancel) through the engine's differentiable forward pass, on the input with the session's
interventions left out.  The strip's top row is the input tokens; the text below is coloured the
same way (red raises the output, blue lowers it).
"""
from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QPushButton, QSpinBox, QSplitter, QTextBrowser, QVBoxLayout,
                               QWidget)

from engine.analysis.attribution import Target
from engine.analysis.patching import attribute
from engine.errors import SeqScopeError

from ._background import BackgroundTask, save_csv, status_row
from ._common import MessageStack, no_model_or_trace, visible, wrapped_label
from .colors import DIVERGING, rgb_scaled, light_text, symmetric_level

METHODS = (("integrated gradients", "ig"), ("gradient × input", "grad"), ("patching (zero each state)", "patch"))
MAX_TICKS = 80  # token texts on the axis up to this many tokens


class AttributionView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.result = None
        self.what = QComboBox()
        self.what.addItems(["logit of token", "selected unit"])
        self.token = QComboBox()
        self.token.setMinimumContentsLength(10)
        self.token.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.token.setToolTip("the token whose logit is attributed (default: the one the model ranks first)")
        self.step = QSpinBox()
        self.step.setPrefix("at step ")
        self.step.setMaximum(10**9)
        self.method = QComboBox()
        self.method.addItems([m[0] for m in METHODS])
        self.steps = QSpinBox()
        self.steps.setRange(1, 4096)
        self.steps.setValue(32)
        self.steps.setPrefix("steps ")
        self.run_button = QPushButton("Attribute")
        self.run_button.clicked.connect(self.compute)
        self.csv_button = QPushButton("CSV…")
        self.csv_button.clicked.connect(lambda: save_csv(self, "attribution.csv", self.csv_rows()))
        self.task = BackgroundTask(session, "attribution", self)
        self.task.done.connect(self._done)
        self.task.failed.connect(self._failed)
        row1, row2 = QHBoxLayout(), QHBoxLayout()
        for w in (self.what, self.token, self.step):
            row1.addWidget(w)
        row1.addStretch(1)
        for w in (self.method, self.steps, self.run_button):
            row2.addWidget(w)
        row2.addStretch(1)
        row2.addWidget(self.csv_button)
        self.status = wrapped_label()

        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "step")
        self.plot_item.invertY(True)
        self.plot_item.getAxis("bottom").enableAutoSIPrefix(False)
        self.plot_item.getAxis("left").setWidth(80)  # room for the row names (input, layers.k.h)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot_item.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=DIVERGING, interactive=False, width=12)
        self.colorbar.setImageItem(self.image, insert_in=self.plot_item)
        self.text = QTextBrowser()
        self.text.setOpenLinks(False)
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.plot)
        split.addWidget(self.text)
        split.setSizes([260, 400])
        self.stack = MessageStack(split)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addLayout(status_row(self.status, self.task.widget))
        layout.addWidget(self.stack, 1)
        self.method.currentIndexChanged.connect(lambda i: self.steps.setEnabled(METHODS[i][1] == "ig"))
        self.what.currentIndexChanged.connect(lambda i: self.token.setEnabled(i == 0))
        session.model_changed.connect(self._model_changed)
        session.trace_changed.connect(self._trace_changed)
        session.selection_changed.connect(lambda: self.step.setValue(self.session.step))
        self._model_changed()

    # -- controls -------------------------------------------------------------------------
    def _model_changed(self):
        self.result = None
        self.token.clear()
        m = self.session.model
        has_head = m is not None and any(s.name == "logits" for s in m.probe_specs())
        if has_head:
            n = int(np.prod(next(s.shape for s in m.probe_specs() if s.name == "logits")))
            tok = m.tokenizer
            self.token.addItem("top-ranked", -1)
            for i in range(min(n, 5000)):
                self.token.addItem(f"{i}: {visible(tok.piece(i))}" if tok is not None else str(i), i)
        self.what.model().item(0).setEnabled(has_head)
        self.what.setCurrentIndex(0 if has_head else 1)
        self._trace_changed()

    def _trace_changed(self):
        msg = no_model_or_trace(self.session)
        self.run_button.setEnabled(msg is None)
        if msg is not None:
            self.stack.show_message(msg)
        elif self.result is None:
            self.stack.show_message("Choose an output (a logit, or the selected unit) and a step, then Attribute.")

    def target(self) -> Target:
        s = self.session
        trace = s.clean_trace if s.clean_trace is not None else s.trace
        step = min(self.step.value(), trace.n_tokens - 1)
        if self.what.currentIndex() == 0:
            token = self.token.currentData()
            if token is None or token < 0:
                token = int(np.argmax(trace["logits"][step])) if "logits" in trace.arrays else 0
            return Target("logit", "logits", int(token), step)
        return Target("unit", s.probe, int(s.units[0] if s.units else 0), step)

    # -- computing -------------------------------------------------------------------------
    def compute(self):
        s = self.session
        if no_model_or_trace(s) is not None:
            return
        inp = s.current_input()
        try:
            target = self.target()
        except (SeqScopeError, KeyError) as exc:
            self.stack.show_message(str(exc))
            return
        method = METHODS[self.method.currentIndex()][1]
        steps, model = self.steps.value(), s.model
        if s.trace.n_sequences > 1:
            self.stack.show_message("Attribution reads one sequence; this input holds several.")
            return
        self.status.setText(f"attributing {target.describe()} …")
        self.task.start(lambda should_stop, progress: attribute(model, inp, target, method, steps=steps,
                                                                 should_stop=should_stop, progress=progress))

    def _failed(self, message: str):
        self.status.setText("")
        self.stack.show_message(message)

    def _done(self, result):
        self.result = result
        rows = [("input", result.scores)] + list(result.states.items())
        values = np.stack([np.asarray(v, dtype=np.float32) for _, v in rows])
        level = symmetric_level(values[:1])
        self.image.setImage(values, levels=(-level, level), autoLevels=False)
        self.image.setLookupTable(DIVERGING.getLookupTable(0.0, 1.0, 256))
        self.image.setRect(-0.5, -0.5, values.shape[1], values.shape[0])
        self.colorbar.setLevels((-level, level))
        left = self.plot_item.getAxis("left")
        left.setTicks([[(i, name) for i, (name, _) in enumerate(rows)]])
        bottom = self.plot_item.getAxis("bottom")
        T = len(result.tokens)
        bottom.setTicks([[(i, visible(t)) for i, t in enumerate(result.tokens)]] if T <= MAX_TICKS else None)
        self.plot_item.setTitle(f"{result.method}: {result.target.describe()}")
        self.plot_item.autoRange()
        note = ""
        if result.baseline is not None:
            note = (f" f(x) = {result.output:+.4f}, f(0) = {result.baseline:+.4f}, scores sum to "
                    f"{result.scores.sum():+.4f} (completeness gap {100 * result.completeness_gap:.2f} %"
                    f"{'; more steps bring it down' if result.completeness_gap > 0.01 else ''})."
                    + "".join(f" {n[0].upper()}{n[1:]}." for n in result.notes))
        top = int(np.argmax(np.abs(result.scores)))
        what = result.target.describe()
        tok = getattr(self.session.model, "tokenizer", None)
        if result.target.kind == "logit" and tok is not None:
            what += f" ({visible(tok.piece(result.target.index))})"
        self.status.setText(f"{what}: largest |score| at step {top} "
                            f"({visible(result.tokens[top])!s}).{note}")
        self._show_text(result, level)
        self.stack.show_content()

    def _show_text(self, result, level):
        rgb = rgb_scaled(result.scores, -level, level, DIVERGING)
        light = light_text(rgb)
        parts = []
        for t, piece in enumerate(result.tokens):
            r, g, b = (int(c) for c in rgb[t])
            fg = "#fff" if light[t] else "#000"
            shown = html.escape(piece).replace("\n", "⏎<br>").replace(" ", "&nbsp;")
            border = "border-bottom:2px solid #000;" if t == result.target.step else ""
            parts.append(f'<span title="step {t}: {result.scores[t]:+.4g}" '
                         f'style="background-color:rgb({r},{g},{b});color:{fg};{border}">{shown}</span>')
        self.text.setHtml('<div style="font-family:monospace; font-size:14px;">' + "".join(parts) + "</div>")

    def csv_rows(self) -> list[list]:
        r = self.result
        if r is None:
            return [["step", "token", "score"]]
        names = list(r.states)
        rows = [["step", "token", f"{r.method} score"] + [f"grad x {n}" for n in names]]
        for t, piece in enumerate(r.tokens):
            rows.append([t, piece, float(r.scores[t])] + [float(r.states[n][t]) for n in names])
        return rows
