"""Linear probe: fit a probe for a feature of the input on every layer of the current trace, show
the held-out score per layer, and steer along the best probe's direction in one click.

The feature is a regex over the text (1 for tokens inside a match), a token class or a column of
a numeric input; the probe point is a site (``h``, ``c``, ``out``, ``state`` ...) fitted on every
layer that records it.  Fitting runs on the worker thread (progress, Cancel) on the trace without
interventions.  "Steer along it" adds ``add alpha * direction`` at the best layer's probe point
from the chosen step on, as an intervention of the session (which re-runs the model).
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from engine.analysis import linear_probe as LP
from engine.analysis.neurons import TOKEN_CLASSES
from engine.errors import SeqScopeError

from ._background import BackgroundTask, save_csv, status_row
from ._common import MessageStack, no_model_or_trace, wrapped_label

FEATURE_KINDS = ("regex", "token class", "input column")


class LinearProbeView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.result: LP.ProbeResult | None = None
        self.kind = QComboBox()
        self.kind.addItems(FEATURE_KINDS)
        self.regex = QLineEdit('"[^"]*"')
        self.regex.setPlaceholderText("a regex over the text")
        self.token_class = QComboBox()
        self.token_class.addItems(TOKEN_CLASSES)
        self.column = QSpinBox()
        self.column.setPrefix("column ")
        self.site = QComboBox()
        self.site.setToolTip("the probe point, fitted on every layer that records it")
        self.fit_button = QPushButton("Fit")
        self.fit_button.clicked.connect(self.fit)
        row1 = QHBoxLayout()
        row1.addWidget(QLabel("feature"))
        for w in (self.kind, self.regex, self.token_class, self.column):
            row1.addWidget(w)
        row1.setStretch(2, 1)
        row1.addWidget(QLabel("on every layer's"))
        row1.addWidget(self.site)
        row1.addWidget(self.fit_button)
        self.regex.setMinimumWidth(80)

        self.alpha = QDoubleSpinBox()
        self.alpha.setRange(-1000, 1000)
        self.alpha.setValue(2.0)
        self.alpha.setPrefix("α = ")
        self.from_step = QSpinBox()
        self.from_step.setPrefix("from step ")
        self.from_step.setMaximum(10**9)
        self.steer_button = QPushButton("Steer along it")
        self.steer_button.setToolTip("add α × the best probe's unit direction at its probe point from the step on")
        self.steer_button.clicked.connect(self.steer)
        self.csv_button = QPushButton("CSV…")
        self.csv_button.clicked.connect(lambda: save_csv(self, "linear_probe.csv", self.csv_rows()))
        self.task = BackgroundTask(session, "linear_probe", self)
        self.task.done.connect(self._fitted)
        self.task.failed.connect(self._failed)
        row2 = QHBoxLayout()
        row2.addWidget(self.alpha)
        row2.addWidget(self.from_step)
        row2.addWidget(self.steer_button)
        row2.addStretch(1)
        row2.addWidget(self.csv_button)

        self.status = wrapped_label()
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "layer")
        self.plot_item.setLabel("left", "held-out score")
        self.plot_item.showGrid(y=True, alpha=0.3)
        self.plot_item.getAxis("bottom").enableAutoSIPrefix(False)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.6, brush=(70, 130, 180))
        self.train_points = pg.ScatterPlotItem(symbol="o", size=8, brush=(220, 120, 30), pen=None, name="train")
        self.plot_item.addItem(self.bars)
        self.plot_item.addItem(self.train_points)
        self.stack = MessageStack(self.plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addLayout(status_row(self.status, self.task.widget))
        layout.addWidget(self.stack, 1)
        self.kind.currentIndexChanged.connect(self._show_kind_widgets)
        self.regex.returnPressed.connect(self.fit)
        session.model_changed.connect(self._model_changed)
        session.trace_changed.connect(self._trace_changed)
        session.selection_changed.connect(lambda: self.from_step.setValue(self.session.step))
        self._show_kind_widgets()
        self._model_changed()

    # -- controls -------------------------------------------------------------------------
    def _show_kind_widgets(self):
        k = self.kind.currentIndex()
        self.regex.setVisible(k == 0)
        self.token_class.setVisible(k == 1)
        self.column.setVisible(k == 2)

    def _model_changed(self):
        self.result = None
        self.site.clear()
        m = self.session.model
        if m is not None:
            sites = []
            for s in m.probe_specs():
                if s.layer is not None and s.site not in sites and s.site != "attn":
                    sites.append(s.site)
            self.site.addItems(sites)
            preferred = next((s for s in ("h", "out") if s in sites), None)
            if preferred:
                self.site.setCurrentText(preferred)
            self.kind.setCurrentIndex(0 if m.takes_tokens else 2)
        self._trace_changed()

    def _trace_changed(self):
        msg = no_model_or_trace(self.session)
        trace = self._trace()
        if trace is not None and trace.inputs is not None:
            self.column.setMaximum(max(0, trace.inputs.shape[1] - 1))
        self.fit_button.setEnabled(msg is None)
        self.steer_button.setEnabled(self.result is not None and self.session.model is not None)
        if msg is None:
            self.from_step.setValue(self.session.step)
        if msg is not None:
            self.stack.show_message(msg)
        elif self.result is None:
            self.stack.show_message("Choose a feature and a probe point, then Fit: a probe is fitted on every layer "
                                    "and scored on held-out tokens.")

    def _trace(self):
        s = self.session
        return s.clean_trace if s.clean_trace is not None else s.trace

    def feature(self, trace) -> LP.Feature:
        k = self.kind.currentIndex()
        if k == 0:
            return LP.make_feature(trace, regex=self.regex.text())
        if k == 1:
            return LP.make_feature(trace, token_class=self.token_class.currentText())
        return LP.make_feature(trace, column=self.column.value())

    # -- fitting --------------------------------------------------------------------------
    def fit(self):
        trace = self._trace()
        if trace is None or not self.site.currentText():
            return
        try:
            feature = self.feature(trace)
        except SeqScopeError as exc:
            self.stack.show_message(str(exc))
            return
        pattern = f"layers.*.{self.site.currentText()}"
        self.status.setText(f"fitting {feature.name} on {pattern} …")
        self.task.start(lambda should_stop, progress: LP.fit_probes(trace, feature, pattern, should_stop=should_stop,
                                                                      progress=progress))

    def _failed(self, message: str):
        self.status.setText("")
        self.stack.show_message(message)

    def _fitted(self, result: LP.ProbeResult):
        self.result = result
        layers = np.arange(len(result.fits))
        tests = np.array([f.test_score for f in result.fits])
        self.bars.setOpts(x=layers, height=tests, width=0.6)
        self.train_points.setData(layers, [f.train_score for f in result.fits])
        self.plot_item.getAxis("bottom").setTicks([[(i, f.probe) for i, f in enumerate(result.fits)]])
        low = min(0.0, float(tests.min()))
        self.plot_item.setYRange(low, 1.0, padding=0.05)
        self.plot_item.setXRange(-0.6, len(layers) - 0.4, padding=0)
        self.plot_item.setTitle(f"{result.feature.name}: held-out {result.best.metric} per layer (bars), "
                                f"train (dots)")
        b = result.best
        chance = ""
        if result.feature.kind != "numeric":  # what always guessing the commonest value scores
            _, counts = np.unique(result.feature.values, return_counts=True)
            chance = f"; always guessing the commonest value: {counts.max() / counts.sum():.3f}"
        self.status.setText(f"{result.feature.name} ({result.feature.kind}); {result.split}. Best: {b.probe}, "
                            f"held-out {b.metric} {b.test_score:.3f} (train {b.train_score:.3f}){chance}.")
        self.stack.show_content()
        self.steer_button.setEnabled(True)

    # -- steering -------------------------------------------------------------------------
    def steer(self):
        """Add the best probe's steering intervention to the session (it re-runs the model)."""
        if self.result is None:
            return
        try:
            cls = 1 if self.result.best.direction.ndim == 2 else None
            self.session.add_intervention(self.result.steering(self.alpha.value(), self.from_step.value(), cls))
        except SeqScopeError as exc:
            self.session.error.emit(f"Could not steer: {exc}")

    def csv_rows(self) -> list[list]:
        rows = [["probe", "fit", "metric", "train", "held_out", "n_train", "n_test"]]
        if self.result is None:
            return rows
        for f in self.result.fits:
            rows.append([f.probe, f.kind, f.metric, f.train_score, f.test_score, f.n_train, f.n_test])
        rows.append([])
        rows.append(["unit", f"direction of {self.result.best.probe}"])
        d = np.atleast_2d(self.result.best.direction)[0]
        rows += [[u, float(v)] for u, v in enumerate(d)]
        return rows
