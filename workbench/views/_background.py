"""A view's slow computation on the session's worker thread, with a progress bar and Cancel
(not a view itself), and the CSV writing of the views' numbers.  Each view gives its jobs a kind
of their own: a new request of that kind supersedes the previous one (the runner's rule), and
results of other kinds are ignored.  Jobs never touch widgets."""
from __future__ import annotations

import csv
import io
from typing import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QProgressBar, QPushButton, QWidget

from engine.atomic import write_text

from ..export import ExportError


def status_row(status: QWidget, task_widget: QWidget) -> QHBoxLayout:
    """A status line with a task's progress bar and Cancel at its right.  There, and not among a
    view's controls, showing the bar never widens the view (nor its dock's column)."""
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(status, 1)
    row.addWidget(task_widget)
    return row


class BackgroundTask(QObject):
    """``start(fn)`` runs ``fn(should_stop, progress)`` off the GUI thread; ``done(result)`` or
    ``failed(message)`` comes back on the GUI thread.  ``widget`` holds the bar and Cancel."""

    done = Signal(object)
    failed = Signal(str)

    def __init__(self, session, kind: str, parent=None):
        super().__init__(parent)
        self.session, self.kind = session, kind
        self.running = False
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(160)
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.widget = QWidget()
        row = QHBoxLayout(self.widget)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)
        self.widget.setVisible(False)
        runner = session.runner
        runner.finished.connect(self._finished)
        runner.failed.connect(self._failed)
        runner.progress.connect(self._progress)

    def start(self, fn: Callable):
        self.running = True
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.widget.setVisible(True)
        self.session.runner.submit(self.kind, fn)

    def cancel(self):
        self.session.runner.cancel(self.kind)
        self._stop("Cancelled.")

    def _stop(self, message: str):
        """The job is over (``message``: what to say about it, "" when it finished)."""
        self.running = False
        self.widget.setVisible(False)

    def _progress(self, _id, kind, done, total):
        if kind == self.kind and total > 0:
            self.bar.setRange(0, int(total))
            self.bar.setValue(int(done))

    def _finished(self, _id, kind, result):
        if kind == self.kind and self.running:
            self._stop("")
            self.done.emit(result)

    def _failed(self, _id, kind, message):
        if kind == self.kind and self.running:
            self._stop(message)
            self.failed.emit(message)


def save_csv(parent, default_name: str, rows: list[list]) -> str | None:
    """Ask for a file name and write ``rows`` (the first is the header) there as CSV."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export CSV", default_name, "CSV (*.csv)")
    return write_csv(path, rows) if path else None


def csv_text(rows) -> str:
    """``rows`` (the first is the header) as CSV text; floats with 9 significant digits."""
    out = io.StringIO(newline="")
    w = csv.writer(out)
    for r in rows:
        w.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in r])
    return out.getvalue()


def write_csv(path, rows) -> str:
    """``rows`` (the first is the header) to ``path`` as CSV, atomically (engine.atomic)."""
    write_text(path, csv_text(rows), "CSV file", ExportError)
    return str(path)
