"""Neuron search: rank the selected probe's units by correlation with a feature of the input,
and show where the selected unit fires most.

The search runs on the trace without interventions (what the model does by itself) unless
"with interventions" is ticked.  The feature is a regex over the text (1 for tokens inside a
match: ``"[^"]*"`` marks string literals), a token class, or a column of a numeric input.  The
ranked list shows (unit, r) for the selected probe, strongest first (point-biserial r for 0/1
features, Pearson otherwise); clicking a row selects that unit.  The contexts list shows the
selected unit's top-activating positions (or bottom ones: by default, those where the unit
follows the feature, by the sign of its r) with the text around them (the token highlighted);
clicking one moves the cursor there.  "Pin" adds the selected (probe, unit) to the session's pinned list.

Cheap: the ranking is cached per (trace, probe, feature, order), kept across clean re-runs of
the same input (``TraceKey``), and recomputed only while the view is visible (on its next
show otherwise); regex edits are debounced.
"""
from __future__ import annotations

import re

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
                               QSpinBox, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from engine.analysis import neurons as N

from ._common import LazyRefresh, MessageStack, TraceKey, no_model_or_trace, visible, wrapped_label

FEATURE_KINDS = ("regex", "token class", "input column")
ORDERS = (("|r|", "abs"), ("r > 0 first", "pos"), ("r < 0 first", "neg"))
CONTEXT_MODES = (("by the sign of r", "auto"), ("highest", "max"), ("lowest", "min"))


class NeuronSearchView(QWidget):
    N_CONTEXTS = 20
    CONTEXT_WIDTH = 24
    DEBOUNCE_MS = 300

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.plot_item = None  # lists: nothing for the plot exporter
        mono = QFont("monospace")
        mono.setStyleHint(QFont.Monospace)

        self.kind = QComboBox()
        self.kind.addItems(FEATURE_KINDS)
        self.regex = QLineEdit('"[^"]*"')
        self.regex.setPlaceholderText('a regex over the text, e.g. "[^"]*"')
        self.regex.setFont(mono)
        self.token_class = QComboBox()
        self.token_class.addItems(N.TOKEN_CLASSES)
        self.column = QSpinBox()
        self.column.setPrefix("column ")
        self.order = QComboBox()
        self.order.addItems([o[0] for o in ORDERS])
        self.steered = QCheckBox("with interventions")
        self.steered.setToolTip("search the trace with the interventions applied (default: without)")
        controls = QHBoxLayout()
        controls.addWidget(QLabel("feature"))
        for w in (self.kind, self.regex, self.token_class, self.column):
            controls.addWidget(w)
        controls.addWidget(QLabel("rank by"))
        controls.addWidget(self.order)
        controls.addWidget(self.steered)
        controls.setStretch(2, 1)
        self.status = wrapped_label()

        self.ranking = QTableWidget(0, 2)
        self.ranking.setHorizontalHeaderLabels(["unit", "r"])
        self.ranking.verticalHeader().setVisible(False)
        self.ranking.setEditTriggers(QTableWidget.NoEditTriggers)
        self.ranking.setSelectionBehavior(QTableWidget.SelectRows)
        self.ranking.setSelectionMode(QTableWidget.SingleSelection)
        self.ranking.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.ranking.cellClicked.connect(self._on_rank_clicked)
        self.ranking_stack = MessageStack(self.ranking)

        self.contexts_title = QLabel()
        self.contexts_title.setTextFormat(Qt.PlainText)
        self.contexts = QTableWidget(0, 5)
        self.contexts.setHorizontalHeaderLabels(["step", "value", "before", "token", "after"])
        self.contexts.verticalHeader().setVisible(False)
        self.contexts.setEditTriggers(QTableWidget.NoEditTriggers)
        self.contexts.setSelectionBehavior(QTableWidget.SelectRows)
        self.contexts.setSelectionMode(QTableWidget.SingleSelection)
        for col in range(4):
            self.contexts.horizontalHeader().setSectionResizeMode(col, QHeaderView.ResizeToContents)
        self.contexts.horizontalHeader().setSectionResizeMode(4, QHeaderView.Stretch)
        self.contexts.setWordWrap(False)
        self.contexts.setFont(mono)
        self.contexts.cellClicked.connect(self._on_context_clicked)
        self.context_mode = QComboBox()
        self.context_mode.addItems([m[0] for m in CONTEXT_MODES])
        self.context_mode.setToolTip("show where the unit is highest, lowest, or (by the sign of r) where it "
                                     "follows the feature")
        self.pin_button = QPushButton("Pin unit")
        self.pin_button.clicked.connect(self.pin_selected)
        self.pinned_label = wrapped_label()
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        head = QHBoxLayout()
        head.addWidget(self.contexts_title, 1)
        head.addWidget(self.context_mode)
        head.addWidget(self.pin_button)
        rl.addLayout(head)
        rl.addWidget(self.contexts, 1)
        rl.addWidget(self.pinned_label)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.ranking_stack)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 3)
        self.stack = MessageStack(split)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        layout.addWidget(self.stack, 1)

        self.units = np.zeros(0, dtype=np.int64)  # the ranking shown: units, strongest first
        self.r = np.zeros(0)
        self.feature: np.ndarray | None = None
        self.context_rows: list[N.Context] = []
        self._rank_key = None
        self._feature_key = None
        self._context_key = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(self.DEBOUNCE_MS)
        self._debounce.timeout.connect(lambda: self._lazy.request())
        self._lazy = LazyRefresh(self, self.refresh)

        self.kind.currentIndexChanged.connect(self._on_kind)
        self.regex.textChanged.connect(lambda _t: self._debounce.start())
        self.regex.returnPressed.connect(self._lazy.request)
        self.token_class.currentIndexChanged.connect(lambda _i: self._lazy.request())
        self.column.valueChanged.connect(lambda _v: self._lazy.request())
        self.order.currentIndexChanged.connect(lambda _i: self._lazy.request())
        self.steered.toggled.connect(lambda _b: self._lazy.request())
        self.context_mode.currentIndexChanged.connect(lambda _i: self._lazy.request())
        session.model_changed.connect(self._lazy.request)
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._lazy.request)
        self._show_kind_widgets()
        self.refresh()

    # -- the feature --------------------------------------------------------------------------------
    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        """Bring a hidden view up to date now (before exporting it, say)."""
        self._lazy.flush()

    def ranking_message(self) -> str:
        return self.ranking_stack.message()

    def set_regex(self, pattern: str):
        """Use a regex feature (as typing it and pressing Enter would)."""
        self.kind.setCurrentIndex(0)
        self.regex.setText(pattern)
        self._debounce.stop()
        self._lazy.request()

    def set_token_class(self, name: str):
        self.kind.setCurrentIndex(1)
        self.token_class.setCurrentIndex(N.TOKEN_CLASSES.index(name))
        self._lazy.request()

    def set_input_column(self, column: int):
        self.kind.setCurrentIndex(2)
        self.column.setValue(column)
        self._lazy.request()

    def _on_kind(self):
        self._show_kind_widgets()
        self._lazy.request()

    def _show_kind_widgets(self):
        k = self.kind.currentIndex()
        self.regex.setVisible(k == 0)
        self.token_class.setVisible(k == 1)
        self.column.setVisible(k == 2)

    def _feature_spec(self):
        k = self.kind.currentIndex()
        if k == 0:
            return ("regex", self.regex.text())
        if k == 1:
            return ("class", self.token_class.currentIndex())
        return ("column", self.column.value())

    def _build_feature(self, trace, spec):
        """The feature vector, or a message saying why there is none."""
        kind, arg = spec
        if kind in ("regex", "class") and trace.token_text is None:
            return None, "This input is numeric (no text): choose an input column as the feature."
        if kind == "regex":
            if not arg:
                return None, "Type a regular expression over the text, e.g. \"[^\"]*\" for string literals."
            try:
                f = N.regex_feature(trace.token_text, arg, trace.offsets)
            except re.error as exc:
                return None, f"Not a valid regular expression: {exc}"
            return f, f"/{arg}/ marks {int(f.sum())} of {len(f)} tokens"
        if kind == "class":
            f = N.class_feature(trace.token_text, arg)
            return f, f"{N.TOKEN_CLASSES[arg]} tokens: {int(f.sum())} of {len(f)}"
        if trace.inputs is None:
            return None, "This input is text: an input column needs a numeric input."
        if not 0 <= arg < trace.inputs.shape[1]:
            return None, f"The input has columns 0..{trace.inputs.shape[1] - 1}."
        return N.input_feature(trace.inputs, arg), f"input column {arg}"

    # -- refresh --------------------------------------------------------------------------------------
    def refresh(self):
        self._lazy.pending = False
        s = self.session
        self._update_controls()
        self._update_pinned()
        msg = no_model_or_trace(s)
        trace = self._trace()
        if msg is None and s.probe not in trace.arrays:
            msg = f"The current trace did not record the selected probe {s.probe}."
        if msg is None and trace[s.probe].ndim != 2:
            msg = (f"{s.probe} has {trace[s.probe].ndim - 1} axes per token; neuron search ranks the "
                   "units of a [tokens, units] probe.")
        if msg is not None:
            self._rank_key = self._context_key = None
            self.units, self.r, self.feature, self.context_rows = np.zeros(0, dtype=np.int64), np.zeros(0), None, []
            self.ranking.setRowCount(0)
            self.contexts.setRowCount(0)
            self.status.setText("")
            self.stack.show_message(msg)
            return
        self.stack.show_content()
        self._update_ranking()
        self._update_contexts()

    def _trace(self):
        """The trace searched: without interventions (what the model does by itself) unless
        "with interventions" is ticked."""
        s = self.session
        return s.trace if self.steered.isChecked() or s.clean_trace is None else s.clean_trace

    def _update_controls(self):
        trace = self._trace()
        text = trace is None or trace.token_text is not None
        numeric = trace is not None and trace.inputs is not None
        model = self.kind.model()
        model.item(0).setEnabled(text)
        model.item(1).setEnabled(text)
        model.item(2).setEnabled(numeric)
        if numeric:
            self.column.blockSignals(True)
            self.column.setMaximum(max(0, trace.inputs.shape[1] - 1))
            self.column.blockSignals(False)
        want = self.kind.currentIndex()
        if want != 2 and not text and numeric:
            want = 2
        elif want == 2 and not numeric and text:
            want = 0
        if want != self.kind.currentIndex():
            self.kind.blockSignals(True)
            self.kind.setCurrentIndex(want)
            self.kind.blockSignals(False)
            self._show_kind_widgets()

    def _update_ranking(self):
        s, trace = self.session, self._trace()
        spec = self._feature_spec()
        order = ORDERS[self.order.currentIndex()][1]
        rest = (s.probe, spec, order)
        if self._rank_key is not None and self._rank_key[1:] == rest and self._rank_key[0].matches(s.model, trace):
            return
        self._rank_key = (TraceKey(s.model, trace), *rest)
        if (self._feature_key is None or self._feature_key[1] != spec
                or not self._feature_key[0].matches(s.model, trace)):
            self.feature, self._feature_note = self._build_feature(trace, spec)
            self._feature_key = (TraceKey(s.model, trace), spec)
        f = self.feature
        self.units, self.r = np.zeros(0, dtype=np.int64), np.zeros(0)
        self.ranking.setRowCount(0)
        if f is None:
            self.status.setText("")
            self.ranking_stack.show_message(self._feature_note)
            return
        if np.all(f == f[0]):
            self.status.setText(self._feature_note)
            self.ranking_stack.show_message("The feature is the same at every token, so no unit correlates with "
                                            "it. Try another pattern or a longer input.")
            return
        binary = N.is_binary(f)
        self.units, self.r = N.rank_units(trace[s.probe], f, method="auto", order=order)
        which = "with" if trace is s.trace and s.interventions else "without"
        self.status.setText(f"{self._feature_note}; units of {s.probe} by "
                            f"{'point-biserial' if binary else 'Pearson'} r with it ({which} interventions)")
        self.ranking_stack.show_content()
        self.ranking.setRowCount(len(self.units))
        for row, (u, r) in enumerate(zip(self.units.tolist(), self.r.tolist())):
            for c, text in enumerate((str(u), "—" if np.isnan(r) else f"{r:+.3f}")):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.ranking.setItem(row, c, item)

    def _update_contexts(self):
        s, trace = self.session, self._trace()
        unit = s.units[0] if s.units else 0
        mode = self._context_mode(unit)
        rest = (s.probe, unit, mode)
        if (self._context_key is not None and self._context_key[1:] == rest
                and self._context_key[0].matches(s.model, trace)):
            self._mark_selected_unit(unit)
            return
        self._context_key = (TraceKey(s.model, trace), *rest)
        values = trace[s.probe]
        if not 0 <= unit < values.shape[1]:
            self.context_rows = []
            self.contexts.setRowCount(0)
            self.contexts_title.setText(f"unit {unit} is not in {s.probe}")
            return
        self.context_rows = N.top_contexts(values[:, unit], trace.token_text, self.N_CONTEXTS,
                                           width=self.CONTEXT_WIDTH, offsets=trace.offsets, mode=mode)
        self.contexts_title.setText(f"Where {s.probe} unit {unit} is {'highest' if mode == 'max' else 'lowest'}")
        self.contexts.setRowCount(len(self.context_rows))
        text = trace.token_text is not None
        bold = QFont(self.contexts.font())
        bold.setBold(True)
        for row, c in enumerate(self.context_rows):
            cells = (str(c.position), f"{c.value:+.3f}", visible(c.left, spaces=False) if text and c.left else "",
                     visible(c.token) if text else "", visible(c.right, spaces=False) if text and c.right else "")
            for col, cell in enumerate(cells):
                item = QTableWidgetItem(cell)
                if col < 3:  # numbers, and the text before the token, flush against the token
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if col == 3:
                    item.setFont(bold)
                    item.setTextAlignment(Qt.AlignCenter)
                    item.setBackground(QColor(255, 210, 80))
                    item.setForeground(QColor(0, 0, 0))
                self.contexts.setItem(row, col, item)
        self._mark_selected_unit(unit)

    def _context_mode(self, unit: int) -> str:
        """"max" or "min": as chosen, or by the sign of the unit's r in the ranking ("auto")."""
        chosen = CONTEXT_MODES[self.context_mode.currentIndex()][1]
        if chosen != "auto":
            return chosen
        rows = np.flatnonzero(self.units == unit)
        return "min" if len(rows) and self.r[rows[0]] < 0 else "max"

    def _mark_selected_unit(self, unit: int):
        rows = np.flatnonzero(self.units == unit)
        self.ranking.blockSignals(True)
        if len(rows):
            self.ranking.selectRow(int(rows[0]))
        else:
            self.ranking.clearSelection()
        self.ranking.blockSignals(False)

    def _update_pinned(self):
        pinned = self.session.pinned
        self.pinned_label.setText("pinned: " + ", ".join(f"{p}:{u}" for p, u in pinned) if pinned else "")
        self.pin_button.setEnabled(self.session.model is not None and self.session.probe is not None)

    # -- clicks ------------------------------------------------------------------------------------------
    def _on_rank_clicked(self, row: int, _col: int = 0):
        if 0 <= row < len(self.units):
            self.session.select_unit(int(self.units[row]))

    def _on_context_clicked(self, row: int, _col: int = 0):
        if 0 <= row < len(self.context_rows):
            self.session.set_step(self.context_rows[row].position)

    def pin_selected(self):
        s = self.session
        if s.probe is not None and s.units:
            s.pin(s.probe, s.units[0])
