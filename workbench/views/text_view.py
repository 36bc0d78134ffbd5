"""Text highlighter: the input text with every token coloured by the selected unit's activation
(as in Karpathy et al.'s figures), the cursor token boxed; click a token to move the cursor, drag
across tokens to select a span of steps (underlined; the session's ``span``), right-click for
"Match in corpus" (the corpus view answers it).

Drawn by hand on a monospace grid: the layout is computed once per text and width, and a
repaint after an edit only recolours the tokens on screen, so long inputs stay responsive."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import QLabel, QMenu, QScrollArea, QVBoxLayout, QWidget

from ._common import LazyRefresh, computing_message
from .colors import color_scale, light_text, rgb_scaled

TAB_CELLS = 4


class _TextCanvas(QWidget):
    """The grid itself: token i occupies cells [col[i], col[i] + width[i]) of row row[i]."""

    def __init__(self, view):
        super().__init__()
        self.view = view
        font = QFont("DejaVu Sans Mono")
        font.setStyleHint(QFont.Monospace)
        font.setPointSize(10)
        self.setFont(font)
        metrics = QFontMetrics(font)
        self.cell_w = max(1, metrics.horizontalAdvance("M"))
        self.cell_h = metrics.height() + 2
        self.ascent = metrics.ascent() + 1
        self.tokens: tuple[str, ...] = ()
        self._shown: list[str] = []  # each token as drawn (newline as ↵, tabs as spaces)
        self.rows = self.cols = self.widths = np.zeros(0, dtype=int)
        self.colors = np.zeros((0, 3), dtype=np.uint8)
        self.light = np.zeros(0, dtype=bool)  # white text on this token's (dark) background
        self.cursor = -1
        self.span: tuple[int, int] | None = None  # steps a:b underlined
        self._anchor: int | None = None  # where a drag started
        self._layout_key = None
        self.setMouseTracking(False)

    def set_tokens(self, tokens, columns: int):
        key = (len(tokens), columns)
        if key == self._layout_key and tokens == self.tokens:
            return
        self._layout_key = key
        self.tokens = tokens
        n = len(tokens)
        rows, cols, widths = np.zeros(n, int), np.zeros(n, int), np.zeros(n, int)
        r = c = 0
        for i, tok in enumerate(tokens):
            w = max(1, sum(TAB_CELLS if ch == "\t" else 1 for ch in tok.replace("\n", "")) + tok.count("\n"))
            if c + w > columns and c > 0:
                r, c = r + 1, 0
            rows[i], cols[i], widths[i] = r, c, w
            c += w
            if "\n" in tok:
                r, c = r + 1, 0
        self.rows, self.cols, self.widths = rows, cols, widths
        self._shown = [tok.replace("\n", "↵").replace("\t", " " * TAB_CELLS) for tok in tokens]
        height = (int(rows[-1]) + 2 if n else 1) * self.cell_h
        self.setMinimumHeight(height)
        self.resize(self.width(), height)

    def sizeHint(self):
        return QSize(400, self.minimumHeight())

    def paintEvent(self, event):
        painter = QPainter(self)
        painter.fillRect(event.rect(), Qt.white)
        if not len(self.tokens):
            return
        top, bottom = event.rect().top() // self.cell_h, event.rect().bottom() // self.cell_h + 1
        lo, hi = np.searchsorted(self.rows, top, "left"), np.searchsorted(self.rows, bottom, "right")
        cw, ch, ascent = self.cell_w, self.cell_h, self.ascent
        xs, ys = (self.cols[lo:hi] * cw).tolist(), (self.rows[lo:hi] * ch).tolist()
        ws = (self.widths[lo:hi] * cw).tolist()
        rgb = self.colors[lo:min(hi, len(self.colors))].tolist()
        shown = self._shown[lo:hi]
        for x, y, w, c in zip(xs, ys, ws, rgb):  # per token: keep these loops lean
            painter.fillRect(x, y, w, ch, QColor(*c))
        light = self.light[lo:min(hi, len(self.light))].tolist()
        light += [False] * (len(shown) - len(light))
        painter.setPen(Qt.black)
        for x, y, text, white in zip(xs, ys, shown, light):
            if not white:
                painter.drawText(x, y + ascent, text)
        if any(light):  # the text colour follows the background's luminance: white on dark cells
            painter.setPen(Qt.white)
            for x, y, text, white in zip(xs, ys, shown, light):
                if white:
                    painter.drawText(x, y + ascent, text)
        if self.span is not None:
            painter.setPen(QPen(QColor(20, 90, 200), 3))
            for i in range(max(lo, self.span[0]), min(hi, self.span[1])):
                k = i - lo
                painter.drawLine(xs[k], ys[k] + ch - 2, xs[k] + ws[k], ys[k] + ch - 2)
        if lo <= self.cursor < hi:
            k = self.cursor - lo
            painter.setPen(QPen(Qt.white if light[k] else Qt.black, 2))
            painter.drawRect(QRect(xs[k], ys[k], ws[k], ch).adjusted(0, 0, -1, -1))
        painter.end()

    def token_at(self, x: int, y: int) -> int | None:
        r, c = y // self.cell_h, x // self.cell_w
        lo, hi = np.searchsorted(self.rows, r, "left"), np.searchsorted(self.rows, r, "right")
        for i in range(lo, hi):
            if self.cols[i] <= c < self.cols[i] + self.widths[i]:
                return i
        return None

    def mousePressEvent(self, event):
        if event.button() != Qt.LeftButton:
            return
        i = self.token_at(int(event.position().x()), int(event.position().y()))
        self._anchor = i
        if i is not None:
            self.view.session.set_span(None)
            self.view.session.set_step(i)

    def mouseMoveEvent(self, event):
        j = self.token_at(int(event.position().x()), int(event.position().y()))
        if self._anchor is not None and j is not None and j != self._anchor:
            a, b = sorted((self._anchor, j))
            self.view.session.set_span((a, b + 1))

    def contextMenuEvent(self, event):
        s = self.view.session
        menu = QMenu(self)
        span = f" {s.span[0]}:{s.span[1]}" if s.span else ""
        action = menu.addAction(f"Match span{span} in corpus")
        action.setEnabled(s.span is not None and s.corpus is not None)
        if s.corpus is None:
            action.setToolTip("open a corpus trace first (File > Open corpus trace)")
        action.triggered.connect(s.corpus_match_requested.emit)
        menu.exec(event.globalPos())

    def cursor_rect(self) -> QRect:
        if not 0 <= self.cursor < len(self.rows):
            return QRect()
        return QRect(int(self.cols[self.cursor]) * self.cell_w, int(self.rows[self.cursor]) * self.cell_h,
                     self.cell_w, self.cell_h)


class TextView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._lazy = LazyRefresh(self, self.refresh)
        self.plot_item = None
        self.caption = QLabel(" ")
        self.canvas = _TextCanvas(self)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.canvas)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.caption)
        layout.addWidget(self.scroll, 1)
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._lazy.request)
        session.span_changed.connect(self._span_changed)
        session.computing_changed.connect(lambda: session.trace is None and self._lazy.request())

    def unit_values(self, trace=None) -> np.ndarray | None:
        s = self.session
        trace = s.trace if trace is None else trace
        if trace is None or s.probe not in trace.arrays or not s.units:
            return None
        a = trace[s.probe]
        return a.reshape(a.shape[0], -1)[:, s.units[0]]

    def _span_changed(self):
        self.canvas.span = self.session.span
        self.canvas.update()

    def shown_text(self) -> str:
        """The text as laid out (newlines as ↵), for tests and copy."""
        return "".join(self.canvas.tokens)

    def refresh(self):
        s = self.session
        values = self.unit_values()
        if values is None or s.trace.token_text is None:
            self.canvas.set_tokens((), 1)
            self.canvas.colors = np.zeros((0, 3), np.uint8)
            self.canvas.light = np.zeros(0, dtype=bool)
            self.caption.setText((computing_message(s) or "no trace yet") if s.trace is None else
                                 "token ids without a vocabulary: no text to show" if s.model.takes_tokens else
                                 "numeric input: no text to show")
            self.canvas.update()
            return
        columns = max(20, (self.scroll.viewport().width() - 4) // self.canvas.cell_w - 1)
        self.canvas.set_tokens(s.trace.token_text, columns)
        # the clean run's colour range: steering changes the colours, not the scale
        clean = self.unit_values(s.clean_trace) if s.clean_trace is not None else None
        low, high, cmap = color_scale(values if clean is None or clean.shape != values.shape else clean)
        self.canvas.colors = rgb_scaled(values, low, high, cmap)
        self.canvas.light = light_text(self.canvas.colors)
        self.canvas.cursor = s.step
        self.canvas.update()
        rect = self.canvas.cursor_rect()
        if not rect.isNull():
            self.scroll.ensureVisible(rect.center().x(), rect.center().y(), 0, self.canvas.cell_h * 2)
        scale = f"blue < 0 < red, ±{high:.3g}" if low < 0 else f"white 0 … red {high:.3g}"
        self.caption.setText(f"{s.probe} unit {s.units[0]}: {scale} · click a token to move the cursor")

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self.canvas._layout_key = None
        self._lazy.request()

    def flush(self):
        """Bring the view up to date now (before an export, or when its tab is raised)."""
        self._lazy.flush()
