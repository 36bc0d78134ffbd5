"""Text highlighter: the input text with every token coloured by the selected unit's activation
(as in Karpathy et al.'s figures), the cursor token boxed; click a character to move the cursor."""
from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QLabel, QTextBrowser, QVBoxLayout, QWidget

from .colors import rgb_for, symmetric_level

MAX_TOKENS = 20_000  # longer inputs show a window around the cursor


class TextView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.plot_item = None
        self.caption = QLabel(" ")
        self.browser = QTextBrowser()
        self.browser.setOpenLinks(False)
        self.browser.setReadOnly(True)
        font = QFont("DejaVu Sans Mono")
        font.setStyleHint(QFont.Monospace)
        self.browser.setFont(font)
        self.browser.viewport().setCursor(Qt.PointingHandCursor)
        self.browser.anchorClicked.connect(self._clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.caption)
        layout.addWidget(self.browser, 1)
        self._window = (0, 0)
        session.trace_changed.connect(self.refresh)
        session.selection_changed.connect(self.refresh)

    def unit_values(self) -> np.ndarray | None:
        s = self.session
        if s.trace is None or s.probe not in s.trace.arrays or not s.units:
            return None
        a = s.trace[s.probe]
        return a.reshape(a.shape[0], -1)[:, s.units[0]]

    def refresh(self):
        s = self.session
        values = self.unit_values()
        if values is None or s.trace.token_text is None:
            self.browser.setPlainText("" if s.trace is None else "(numeric input: no text to show)")
            self.caption.setText(" ")
            return
        text = s.trace.token_text
        n = len(text)
        lo = max(0, min(s.step - MAX_TOKENS // 2, n - MAX_TOKENS))
        hi = min(n, lo + MAX_TOKENS)
        self._window = (lo, hi)
        level = symmetric_level(values)
        colors = rgb_for(values[lo:hi], level)
        parts = ['<pre style="white-space: pre-wrap; margin: 0">']
        for i in range(lo, hi):
            r, g, b = colors[i - lo]
            piece = html.escape(text[i]) if text[i] else "∅"
            if text[i] == "\n":
                piece = "↵\n"
            style = f"background-color: rgb({r},{g},{b}); color: #000; text-decoration: none"
            if i == s.step:
                style += "; border: 1px solid #000; font-weight: bold"
            parts.append(f'<a href="t{i}" style="{style}">{piece}</a>')
        parts.append("</pre>")
        scroll = self.browser.verticalScrollBar().value()
        self.browser.setHtml("".join(parts))
        self.browser.verticalScrollBar().setValue(scroll)
        window = f" (tokens {lo}–{hi - 1} of {n})" if (lo, hi) != (0, n) else ""
        self.caption.setText(f"{s.probe} unit {s.units[0]}: blue < 0 < red, ±{level:.3g}{window}")

    def _clicked(self, url):
        name = url.toString()
        if name.startswith("t") and name[1:].isdigit():
            self.session.set_step(int(name[1:]))
