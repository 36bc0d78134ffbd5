"""What the analysis views (statistics, timescales, dynamics) share: a job on the session's
worker thread with a progress bar and a Cancel button, and a CSV export of the view's numbers.

:class:`AnalysisJob` submits ``fn(should_stop, progress)`` under the view's own kind (so a newer
request of that view supersedes an older one and never cancels the model's runs), shows its
progress, and hands the result or the error back on the GUI thread.  Jobs never touch widgets.
"""
from __future__ import annotations

import csv
import io

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from engine.atomic import write_text

from ..export import ExportError, safe_filename


class AnalysisJob(QObject):
    """One kind of background job for a view, with its progress row (:attr:`row`)."""

    finished = Signal(object)  # the result
    failed = Signal(str)  # the message
    cancelled = Signal()

    def __init__(self, session, kind: str, parent=None):
        super().__init__(parent)
        self.session, self.kind = session, kind
        self.running = False
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(160)
        self.bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.row = QWidget()
        lay = QHBoxLayout(self.row)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.status, 1)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel_button)
        runner = session.runner
        runner.finished.connect(self._on_finished)
        runner.failed.connect(self._on_failed)
        runner.progress.connect(self._on_progress)

    def start(self, fn, what: str = "Computing…"):
        self.running = True
        self.status.setText(what)
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.bar.setVisible(True)
        self.cancel_button.setVisible(True)
        self.session.runner.submit(self.kind, fn)

    def cancel(self):
        if not self.running:
            return
        self.session.runner.cancel(self.kind)
        self._idle("Cancelled.")
        self.cancelled.emit()

    def _idle(self, text: str):
        self.running = False
        self.bar.setVisible(False)
        self.cancel_button.setVisible(False)
        self.status.setText(text)

    def _on_finished(self, _id, kind, result):
        if kind == self.kind and self.running:
            self._idle("")
            self.finished.emit(result)

    def _on_failed(self, _id, kind, message):
        if kind == self.kind and self.running:
            self._idle(message)
            self.failed.emit(message)

    def _on_progress(self, _id, kind, done, total):
        if kind == self.kind and self.running and total > 0:
            self.bar.setRange(0, int(total))
            self.bar.setValue(int(done))


def csv_text(header, rows) -> str:
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in r])
    return out.getvalue()


def write_csv(path, header, rows):
    """``rows`` under ``header`` to ``path``, atomically."""
    return write_text(path, csv_text(header, rows), "CSV file", ExportError)


def csv_button(view, default_name: str) -> QPushButton:
    """A button that asks for a file name and calls ``view.export_csv(path)``; failures go to the
    session's error signal (the status bar), never up the stack."""
    button = QPushButton("Export CSV…")

    def choose():
        path, _ = QFileDialog.getSaveFileName(view, "Export CSV", safe_filename(default_name), "CSV (*.csv)")
        if path:
            try:
                view.export_csv(path)
            except ExportError as exc:
                view.session.error.emit(str(exc))

    button.clicked.connect(choose)
    return button
