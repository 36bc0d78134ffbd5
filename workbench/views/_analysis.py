"""What the analysis views (statistics, timescales, dynamics) share: a background job
(:mod:`._background`) whose row also says what it is doing, and a CSV export button.

:class:`AnalysisJob` submits ``fn(should_stop, progress)`` under the view's own kind (so a newer
request of that view supersedes an older one and never cancels the model's runs), shows its
progress, and hands the result or the error back on the GUI thread.  Jobs never touch widgets.
"""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QLabel, QPushButton, QWidget

from ..export import ExportError, safe_filename
from ._background import BackgroundTask, status_row
from ._background import write_csv as _write_rows


class AnalysisJob(BackgroundTask):
    """A :class:`BackgroundTask` with a status line: its progress row is :attr:`row`."""

    cancelled = Signal()

    def __init__(self, session, kind: str, parent=None):
        super().__init__(session, kind, parent)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.row = QWidget()
        self.row.setLayout(status_row(self.status, self.widget))

    def start(self, fn, what: str = "Computing…"):
        self.status.setText(what)
        super().start(fn)

    def cancel(self):
        if not self.running:
            return
        super().cancel()
        self.cancelled.emit()

    def _stop(self, message: str):
        super()._stop(message)
        self.status.setText(message)

    def _progress(self, _id, kind, done, total):
        if self.running:
            super()._progress(_id, kind, done, total)


def write_csv(path, header, rows):
    """``rows`` under ``header`` to ``path``, atomically."""
    return _write_rows(path, [header, *rows])


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
