"""Corpus view: ask a recorded corpus trace what the selected unit does across all of it.

Open a corpus with File ▸ Open corpus trace… (or the button here).  Four tabs:

- **Sequences**: the corpus's sequences (the first 5,000), with their names and first characters.
- **Top contexts**: the selected probe and unit's strongest tokens over the whole corpus
  (``engine.corpus.top``: exact, from the file's summary when it has one), with their context;
  follows the selection.
- **Feature ranking**: the neuron search's features (a regex, a token class) or a labels file,
  every unit of the selected probe ranked by |r| and AUC over the corpus
  (``engine.corpus.correlate``); clicking a unit selects it.
- **Match**: LSTMVis's select-and-match (``engine.corpus.match``) for the span of steps selected
  in the text view (drag across tokens; right-click ▸ Match span in corpus): the units on over
  the span, then the corpus's spans where they are on together, ranked as LSTMVis ranks them.

Clicking any row opens that sequence in the window at that step: its input goes through the
session's normal run path (every view, every probe it records), so steering works on it at
once.  Queries run on this view's own worker thread (model runs never wait for them), with
progress and Cancel here; a newer query of the same kind replaces a running one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QHeaderView, QLineEdit,
                               QProgressBar, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QTabWidget,
                               QVBoxLayout, QWidget)

from engine.corpus import correlate as C
from engine.corpus.match import match, match_units
from engine.corpus.top import top

from .. import corpus_jobs as J
from ..runner import Runner
from ._common import LazyRefresh, MessageStack, visible, wrapped_label

TABS = ("Sequences", "Top contexts", "Feature ranking", "Match")
FEATURES = ("regex", "token class", "labels file")


def _table(headers, stretch: int) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QTableWidget.NoEditTriggers)
    t.setSelectionBehavior(QTableWidget.SelectRows)
    t.setSelectionMode(QTableWidget.SingleSelection)
    t.setWordWrap(False)
    for col in range(len(headers)):
        t.horizontalHeader().setSectionResizeMode(col, QHeaderView.Stretch if col == stretch
                                                  else QHeaderView.ResizeToContents)
    return t


def _fill(table: QTableWidget, rows, highlight: int | None = None):
    mono = QFont("monospace")
    mono.setStyleHint(QFont.Monospace)
    table.setRowCount(len(rows))
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            item = QTableWidgetItem(str(text))
            if isinstance(text, (int, float, np.integer, np.floating)) or c == 0:
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            if c == highlight:
                item.setBackground(QColor(255, 210, 80))
                item.setForeground(QColor(0, 0, 0))
                item.setTextAlignment(Qt.AlignCenter)
            if isinstance(text, str) and c >= 3:
                item.setFont(mono)
            table.setItem(r, c, item)


def _page(controls: QHBoxLayout, table: QTableWidget, title: QWidget | None = None) -> QWidget:
    """A tab of the view: a row of controls, a title line if any, and the results table below."""
    page = QWidget()
    lay = QVBoxLayout(page)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addLayout(controls)
    if title is not None:
        lay.addWidget(title)
    lay.addWidget(table, 1)
    return page


def _tail(text: str | None, width: int) -> str:
    t = visible(text, spaces=False)
    return t if len(t) <= width else "…" + t[len(t) - width + 1:]


def _head(text: str | None, width: int) -> str:
    t = visible(text, spaces=False)
    return t if len(t) <= width else t[:width - 1] + "…"


class CorpusView(QWidget):
    N_TOP = 20
    N_MATCH = 50
    N_RANK = 100

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.plot_item = None  # tables: exported as a picture of the view
        self.info: J.CorpusInfo | None = None
        self.opened: tuple[str, int, str | None] | None = None  # (corpus, sequence, text) last opened
        self.top_hits, self.match_spans, self.rank_units, self.rank_auc_units = [], [], [], []
        self.runner = Runner(self)
        self.runner.finished.connect(self._done)
        self.runner.failed.connect(self._failed)
        self.runner.progress.connect(self._progress)
        self.runner.busy_changed.connect(self._busy)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

        self.title = wrapped_label("No corpus open.")
        self.open_button = QPushButton("Open corpus…")
        self.open_button.clicked.connect(self.choose_corpus)
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.open_button)

        self.tabs = QTabWidget()
        self.sequences = _table(["seq", "name", "tokens", "begins with"], 3)
        self.sequences.cellClicked.connect(lambda row, _c: self._open_row(self.info.rows[row][0], 0)
                                           if self.info and row < len(self.info.rows) else None)
        self.tabs.addTab(self.sequences, TABS[0])
        self.tabs.addTab(self._top_tab(), TABS[1])
        self.tabs.addTab(self._rank_tab(), TABS[2])
        self.tabs.addTab(self._match_tab(), TABS[3])
        self.stack = MessageStack(self.tabs)

        self.status = wrapped_label()
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(200)
        self.progress_bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        foot = QHBoxLayout()
        foot.addWidget(self.status, 1)
        foot.addWidget(self.progress_bar)
        foot.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(head)
        layout.addWidget(self.stack, 1)
        layout.addLayout(foot)

        self._lazy = LazyRefresh(self, self.refresh)
        self.tabs.currentChanged.connect(lambda _i: self._lazy.request())
        session.corpus_changed.connect(self._corpus_changed)
        session.selection_changed.connect(self._lazy.request)
        session.model_changed.connect(self._lazy.request)
        session.span_changed.connect(self._update_span_label)
        session.corpus_match_requested.connect(self.match_requested)
        self._top_key = None
        self.refresh()

    # -- tabs ----------------------------------------------------------------------------------
    def _top_tab(self) -> QWidget:
        self.top_title = wrapped_label()
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 1000)
        self.top_k.setValue(self.N_TOP)
        self.top_k.setPrefix("k ")
        self.top_lowest = QCheckBox("lowest")
        self.top_k.valueChanged.connect(lambda _v: self._lazy.request())
        self.top_lowest.toggled.connect(lambda _b: self._lazy.request())
        row = QHBoxLayout()
        row.addWidget(self.top_title, 1)
        row.addWidget(self.top_k)
        row.addWidget(self.top_lowest)
        self.top_table = _table(["#", "value", "seq:step", "before", "token", "after"], 5)
        self.top_table.cellClicked.connect(lambda r, _c: self._open_hit(self.top_hits, r))
        return _page(row, self.top_table)

    def _rank_tab(self) -> QWidget:
        self.feature_kind = QComboBox()
        self.feature_kind.addItems(FEATURES)
        self.regex = QLineEdit('"[^"\\n]*"')
        self.regex.setPlaceholderText('a regex over the text, e.g. "[^"\\n]*"')
        self.token_class = QComboBox()
        self.token_class.addItems(C.TOKEN_CLASSES)
        self.labels_path = QLineEdit()
        self.labels_path.setPlaceholderText("labels: .npy or text, one number per token")
        self.rank_button = QPushButton("Rank units")
        self.rank_button.setToolTip("rank every unit of the selected probe by |r| and AUC with the feature, "
                                    "over the whole corpus")
        self.rank_button.clicked.connect(self.run_ranking)
        self.regex.returnPressed.connect(self.run_ranking)
        self.feature_kind.currentIndexChanged.connect(self._show_feature_widgets)
        row = QHBoxLayout()
        for x in (self.feature_kind, self.regex, self.token_class, self.labels_path, self.rank_button):
            row.addWidget(x)
        row.setStretch(1, 1)
        row.setStretch(3, 1)
        self.rank_title = wrapped_label()
        self.rank_table = _table(["#", "unit", "r", "AUC", "by |AUC-½|: unit", "AUC "], 5)
        self.rank_table.cellClicked.connect(self._rank_clicked)
        self._show_feature_widgets()
        return _page(row, self.rank_table, self.rank_title)

    def _match_tab(self) -> QWidget:
        self.span_label = wrapped_label()
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(-1000, 1000)
        self.threshold.setDecimals(3)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.3)
        self.threshold.setPrefix("on ≥ ")
        self.off_before = QCheckBox("off before")
        self.off_after = QCheckBox("off after")
        self.match_button = QPushButton("Match")
        self.match_button.setToolTip("the spans of the corpus where the units on over the selected span are on")
        self.match_button.clicked.connect(self.run_match)
        row = QHBoxLayout()
        row.addWidget(self.span_label, 1)
        for x in (self.threshold, self.off_before, self.off_after, self.match_button):
            row.addWidget(x)
        self.match_title = wrapped_label()
        self.match_table = _table(["#", "on", "union", "len", "seq:step", "before", "span", "after"], 6)
        self.match_table.cellClicked.connect(lambda r, _c: self._open_hit(self.match_spans, r))
        self._update_span_label()
        return _page(row, self.match_table, self.match_title)

    def _show_feature_widgets(self):
        k = self.feature_kind.currentIndex()
        self.regex.setVisible(k == 0)
        self.token_class.setVisible(k == 1)
        self.labels_path.setVisible(k == 2)

    # -- opening -------------------------------------------------------------------------------
    def choose_corpus(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open corpus trace", "", "Corpus traces (*.h5 *.hdf5);;All (*)")
        if path:
            self.session.open_corpus(path)

    def _corpus_changed(self):
        path = self.session.corpus
        self.info = None
        self.top_hits, self.match_spans, self.rank_units = [], [], []
        for t in (self.sequences, self.top_table, self.rank_table, self.match_table):
            t.setRowCount(0)
        self._top_key = None
        self.title.setText(f"{Path(path).name}: reading…")
        self.submit("describe", lambda stop, progress: J.describe(path, stop))

    def _open_row(self, sequence: int, step: int):
        path = self.session.corpus
        self.submit("open", lambda stop, progress: J.read_sequence(path, sequence, step))

    def _open_hit(self, hits, row: int):
        if 0 <= row < len(hits):
            self._open_row(hits[row].sequence, hits[row].step)

    # -- refresh -------------------------------------------------------------------------------
    def refresh(self):
        self._lazy.pending = False
        s = self.session
        if s.corpus is None:
            self.stack.show_message("No corpus open. File ▸ Open corpus trace… opens a corpus recorded with "
                                    "'seqscope trace MODEL --corpus PATH -o corpus.h5' (or any trace file).")
            return
        self.stack.show_content()
        if self.info is None:
            return
        if self.tabs.currentIndex() == 1:
            self.run_top()
        self._update_span_label()

    def _probe_problem(self) -> str | None:
        s = self.session
        if s.probe is None:
            return "Open a model and select a probe."
        if self.info is not None and s.probe not in self.info.probes:
            return f"The corpus did not record {s.probe}; it has {', '.join(self.info.probes[:8])}."
        return None

    def run_top(self):
        s = self.session
        problem = self._probe_problem()
        if problem:
            self.top_title.setText(problem)
            return
        unit, k, lowest = (s.units[0] if s.units else 0), self.top_k.value(), self.top_lowest.isChecked()
        key = (s.corpus, s.probe, unit, k, lowest)
        if key == self._top_key:
            return
        self._top_key = key
        self.top_hits = []
        self.top_table.setRowCount(0)
        self.top_title.setText(f"{s.probe} unit {unit}: {'lowest' if lowest else 'highest'} over the corpus…")
        path, probe = s.corpus, s.probe
        self.submit("top", lambda stop, progress: top(path, probe, unit, k, lowest=lowest, progress=progress,
                                                       should_stop=stop))

    def run_ranking(self):
        s = self.session
        problem = self._probe_problem()
        if problem or s.corpus is None:
            self.rank_title.setText(problem or "No corpus open.")
            return
        k = self.feature_kind.currentIndex()
        kwargs = ({"regex": self.regex.text()} if k == 0 else {"token_class": self.token_class.currentText()}
                  if k == 1 else {"labels": self.labels_path.text().strip()})
        path, probe = s.corpus, s.probe
        self.rank_title.setText(f"ranking the units of {probe} over the corpus…")
        self.submit("correlate", lambda stop, progress: C.correlate(path, probe, progress=progress, should_stop=stop,
                                                                    **kwargs))

    def match_requested(self):
        self.tabs.setCurrentIndex(TABS.index("Match"))
        self.run_match()

    def run_match(self):
        s = self.session
        problem = self._probe_problem()
        if problem or s.corpus is None:
            self.match_title.setText(problem or "No corpus open.")
            return
        if s.span is None or s.trace is None:
            self.match_title.setText("Select a span first: drag across tokens in the text view.")
            return
        thr, before, after = self.threshold.value(), self.off_before.isChecked(), self.off_after.isChecked()
        path, probe, span = s.corpus, s.probe, s.span
        opened = self.opened
        if opened is not None and opened[0] == path and opened[2] is not None and opened[2] == s.text:
            seq = opened[1]
            fn = (lambda stop, progress: match(path, probe, seq, span, thr, off_before=before, off_after=after,
                                               limit=self.N_MATCH, progress=progress, should_stop=stop))
        else:  # the input is not from the corpus: the units come from the window's own run
            trace = s.clean_trace if s.clean_trace is not None else s.trace
            if probe not in trace.arrays:
                self.match_title.setText(f"The current run did not record {probe}.")
                return
            values = np.asarray(trace[probe])

            def fn(stop, progress):
                units = J.selection_from_trace(values, span, thr, before, after)
                return match_units(path, probe, units, thr, off_before=before, off_after=after, limit=self.N_MATCH,
                                   progress=progress, should_stop=stop)
        self.match_title.setText(f"matching steps {span[0]}:{span[1]} of the input over the corpus…")
        self.submit("match", fn)

    def _update_span_label(self):
        s = self.session
        if s.span is None:
            self.span_label.setText("Select a span in the text view (drag across tokens).")
        else:
            text = "".join(s.trace.token_text[s.span[0]:s.span[1]]) if s.trace is not None and \
                s.trace.token_text is not None and s.span[1] <= s.trace.n_tokens else ""
            self.span_label.setText(f"span {s.span[0]}:{s.span[1]} {_head(text, 30)!r} of {s.probe}")
        self.match_button.setEnabled(s.span is not None and s.corpus is not None)

    # -- the worker ------------------------------------------------------------------------------
    def submit(self, kind: str, fn):
        self.status.setText("")
        self.runner.submit(kind, fn)

    def cancel(self):
        self.runner.cancel()
        self.status.setText("cancelled")
        self.progress_bar.setVisible(False)  # a cancelled job ends without a signal
        self.cancel_button.setVisible(False)
        self._top_key = None

    def shutdown(self):
        self.runner.shutdown()

    def _busy(self, busy: bool):
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if busy:
            self.progress_bar.setRange(0, 0)

    def _progress(self, _id, _kind, done, total):
        self.progress_bar.setRange(0, max(1, int(total)))
        self.progress_bar.setValue(int(done))

    def _failed(self, _id, kind, message):
        self.status.setText(message)
        if kind == "top":
            self._top_key = None
        if kind == "describe":
            self.title.setText(f"Could not read the corpus: {message}")
        if kind == "match":
            self.match_title.setText("No match: see below.")

    def _done(self, _id, kind, result):
        getattr(self, f"_show_{kind}")(result)

    def _show_describe(self, info: J.CorpusInfo):
        if info.path != self.session.corpus:
            return
        self.info = info
        more = f" (first {len(info.rows):,} listed)" if len(info.rows) < info.n_sequences else ""
        self.title.setText(f"{Path(info.path).name}: {info.n_sequences:,} sequences, {info.n_tokens:,} tokens, "
                           f"probes {', '.join(info.probes[:6])}{' …' if len(info.probes) > 6 else ''}{more}")
        _fill(self.sequences, [(s, name, n, _head(preview, 80)) for s, name, n, preview in info.rows])
        self._lazy.request()
        if self.session.text is None and self.session.values is None and info.n_sequences:
            self._open_row(0, 0)  # nothing in the window yet: show the corpus's first sequence

    def _show_open(self, inp: J.SequenceInput):
        self.opened = (self.session.corpus, inp.sequence, inp.text)
        self.session.open_sequence(inp.step, text=inp.text, values=inp.values)
        self.status.setText(f"opened sequence {inp.sequence} at step {inp.step}")

    def _show_top(self, result):
        self.top_hits = result.hits
        where = "from the summary" if result.from_summary else "streamed"
        self.top_title.setText(f"{result.probe} unit {result.unit}: the {len(result.hits)} "
                               f"{'lowest' if result.lowest else 'highest'} of {result.n_tokens:,} tokens ({where})")
        _fill(self.top_table, [(h.rank, f"{h.value:+.3f}", f"{h.sequence}:{h.step}", _tail(h.before, 30),
                                visible(h.token), _head(h.after, 20)) for h in result.hits], highlight=4)

    def _show_correlate(self, result):
        by_r = result.ranking("r", self.N_RANK)
        by_auc = result.ranking("auc", self.N_RANK) if result.auc is not None else [None] * len(by_r)
        self.rank_units = [int(u) for u in by_r]
        self.rank_auc_units = [None if u is None else int(u) for u in by_auc]
        pos = f", {result.positives:,} tokens inside" if result.positives is not None else ""
        self.rank_title.setText(f"{result.probe} against {result.feature} over {result.n_tokens:,} tokens{pos}: "
                                f"by |r| (left) and by |AUC - ½| (right); click a unit to select it")

        def auc(u):
            return "—" if result.auc is None or u is None or not np.isfinite(result.auc[u]) else f"{result.auc[u]:.3f}"
        rows = [(i + 1, int(u), "—" if not np.isfinite(result.r[u]) else f"{result.r[u]:+.3f}", auc(u),
                 "" if a is None else int(a), auc(a)) for i, (u, a) in enumerate(zip(by_r, by_auc))]
        _fill(self.rank_table, rows)

    def _rank_clicked(self, row: int, col: int):
        units = self.rank_auc_units if col >= 4 else self.rank_units
        if 0 <= row < len(units) and units[row] is not None:
            self.session.select_unit(units[row])

    def _show_match(self, result):
        if isinstance(result, tuple):  # match_units: (units, spans, candidates, levels)
            units, spans, candidates, _levels = result
        else:
            units, spans, candidates = result.units, result.spans, result.candidates
        self.match_spans = spans
        shown = ", ".join(map(str, units[:12])) + (" …" if len(units) > 12 else "")
        self.match_title.setText(f"{len(units)} unit(s) on over the span: {shown}. The best {len(spans)} of "
                                 f"{candidates:,} spans scored (most of them on, fewest others, longest).")
        _fill(self.match_table, [(s.rank, f"{s.intersection}/{len(units)}", s.union, s.length,
                                  f"{s.sequence}:{s.step}" + (" ◆" if s.contains_selection else ""),
                                  _tail(s.before, 16), _head(s.text, 40), _head(s.after, 12)) for s in spans],
                                 highlight=6)

    def flush(self):
        self._lazy.flush()
