"""Output view: the top next-token predictions at the cursor step, before and after the
interventions, side by side.

A table: rank, the clean trace's k most probable next tokens with probabilities, the steered
trace's, and how much each steered token's probability changed.  A header line names the
step's token and the token that actually follows, with its probability before → after.
Token texts come from ``model.tokenizer.piece`` with whitespace made visible (⏎, ␣, ⇥); a model
without one shows its output names (``model.info()["output_names"]``, e.g. a classifier's
classes), and classes without a name show as ``#id``.  While the first run of an input computes,
the view says so, with its progress.
"""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from engine.analysis import outputs as O

from ._common import MessageStack, no_model_or_trace, visible, wrapped_label

COLUMNS = ["#", "before", "p", "after", "p", "Δp"]


class OutputView(QWidget):
    def __init__(self, session, parent=None, k: int = 10):
        super().__init__(parent)
        self.session = session
        self.k = k
        self.plot_item = None  # a table: nothing for the plot exporter
        self.header = wrapped_label()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionMode(QTableWidget.NoSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.Monospace)
        self._mono = mono
        self.stack = MessageStack(self.table)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.header)
        layout.addWidget(self.stack, 1)
        self.rows: list[O.Prediction] = []
        self._key = None
        session.model_changed.connect(self.refresh)
        session.trace_changed.connect(self.refresh)
        session.selection_changed.connect(self.refresh)
        session.computing_changed.connect(self._computing_changed)
        self.refresh()

    def _computing_changed(self):
        if self.session.trace is None:
            self.refresh()

    def message(self) -> str:
        return self.stack.message()

    def flush(self):
        """Nothing is deferred in this view (it always refreshes at once)."""

    def token_label(self, i: int) -> str:
        tok = getattr(self.session.model, "tokenizer", None)
        piece = tok.piece(int(i)) if tok is not None else ""
        if piece:
            return visible(piece)
        trace = self.session.trace
        names = trace.model_info.get("output_names") if trace is not None else None
        if isinstance(names, (list, tuple)) and 0 <= int(i) < len(names):
            return str(names[int(i)])
        return f"#{int(i)}"

    def refresh(self):
        s = self.session
        msg = no_model_or_trace(s)
        if msg is None and s.trace.logits is None:
            msg = "This model has no output head (no logits probe), so there are no predictions to show."
        if msg is not None:
            self._key = None
            self.rows = []
            self.table.setRowCount(0)
            self.header.setText("")
            self.stack.show_message(msg)
            return
        trace = s.trace
        clean = s.clean_trace if s.clean_trace is not None and s.clean_trace.logits is not None else trace
        t = min(max(s.step, 0), trace.n_tokens - 1)
        key = (trace, clean, t, self.k)
        if self._key is not None and self._key[0] is trace and self._key[1] is clean and self._key[2:] == key[2:]:
            return  # nothing this view shows has changed
        self._key = key
        self.stack.show_content()
        before, after = clean.logits[t], trace.logits[t]
        self.rows = O.compare(before, after, self.k)
        self._fill(t, trace, clean)

    def _fill(self, t, trace, clean):
        steered = trace is not clean
        self.table.setRowCount(len(self.rows))
        up, down = QBrush(QColor(40, 160, 60)), QBrush(QColor(210, 50, 50))
        for r, row in enumerate(self.rows):
            cells = [str(r + 1), self.token_label(row.before_id), f"{row.before_p:.3f}",
                     self.token_label(row.after_id), f"{row.after_p:.3f}",
                     f"{row.after_change:+.3f}" if steered else "·"]
            for c, text in enumerate(cells):
                item = self.table.item(r, c)
                if item is None:
                    item = QTableWidgetItem()
                    if c in (1, 3):
                        item.setFont(self._mono)
                    if c in (0, 2, 4, 5):
                        item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                    self.table.setItem(r, c, item)
                item.setText(text)
            change = self.table.item(r, 5)
            change.setForeground(up if steered and row.after_change > 5e-4 else
                                 down if steered and row.after_change < -5e-4 else QBrush())
        # header: this step's token and the one that actually follows
        where = f"step {t}"
        if trace.token_text is not None:
            where += f" [{visible(trace.token_text[t])}]"
        text = f"Predictions after {where}"
        seq_end = int(trace.offsets[np.searchsorted(trace.offsets, t, side='right')])
        if trace.inputs is None and t + 1 < seq_end:  # token input: the next token is known
            nxt = int(trace.tokens[t + 1])
            if 0 <= nxt < trace.logits.shape[1]:
                pb = O.softmax(clean.logits[t])[nxt]
                pa = O.softmax(trace.logits[t])[nxt]
                text += f"; next in the input: [{self.token_label(nxt)}] p {pb:.3f}"
                text += f" → {pa:.3f}" if steered else ""
        text += "; before | after interventions" if steered else "; no interventions (before = after)"
        self.header.setText(text)
