"""Input editor: the text the model reads, re-run as the user types (debounced); numeric models
show a summary of their input array instead."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from engine.errors import SeqScopeError
from engine.tokenizers import read_numeric

from ..examples import bundled_samples

DEBOUNCE_MS = 250


class InputEditor(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.plot_item = None
        self.editor = QPlainTextEdit()
        font = QFont("DejaVu Sans Mono")
        font.setStyleHint(QFont.Monospace)
        self.editor.setFont(font)
        self.editor.setPlaceholderText("type the input here; the model re-runs as you type")
        self.status = QLabel(" ")
        self.samples = QComboBox()
        self.samples.addItem("bundled samples…")
        for path in bundled_samples():
            self.samples.addItem(f"{path.parent.name}/{path.name}", str(path))
        self.samples.setEnabled(self.samples.count() > 1)
        self.samples.activated.connect(self._sample_chosen)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.samples)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.editor, 1)
        layout.addLayout(bottom)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self._commit)
        self.editor.textChanged.connect(self._typed)
        self._syncing = False
        session.input_changed.connect(self._show_input)
        session.model_changed.connect(self._show_input)

    def _typed(self):
        if not self._syncing:
            self.timer.start()

    def _commit(self):
        text = self.editor.toPlainText()
        if text != self.session.text:
            self.session.set_text(text)

    def _show_input(self):
        s = self.session
        token_model = s.model is None or s.model.takes_tokens
        self.editor.setReadOnly(not token_model)
        self._syncing = True
        if s.text is not None and s.text != self.editor.toPlainText():
            self.editor.setPlainText(s.text)
        elif s.values is not None and s.values.ndim == 1:  # token ids (a model without a vocabulary)
            self.editor.setPlainText(" ".join(map(str, s.values.tolist())))
        elif s.values is not None:
            v = s.values.reshape(len(s.values), -1)
            self.editor.setPlainText(f"numeric input: {v.shape[0]} steps × {v.shape[1]} features\n"
                                     f"min {v.min():.4g}  max {v.max():.4g}  mean {v.mean():.4g}")
        self._syncing = False
        n = len(s.text) if s.text is not None else (len(s.values) if s.values is not None else 0)
        self.status.setText(f"{n:,} characters" if s.text is not None else f"{n:,} steps")

    def _sample_chosen(self, index: int):
        path = self.samples.itemData(index)
        self.samples.setCurrentIndex(0)
        if not path:
            return
        path = Path(path)
        try:
            if path.suffix in (".npy", ".csv"):
                self.session.set_values(read_numeric(path))
            else:
                self.session.set_text(path.read_text(encoding="utf-8"))
        except (OSError, SeqScopeError) as exc:
            self.session.error.emit(f"Could not open the sample: {exc}")
