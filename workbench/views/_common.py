"""Small helpers the analysis views share (not views themselves).

- :func:`visible`: a token's text with whitespace made visible (newline as ⏎ ...).
- :class:`MessageStack`: a view's content, or a plain message in its place (no model, no
  trace, a model without the probe the view needs).
- :class:`LazyRefresh`: run a view's refresh now when it is visible, else when it is next
  shown, so views hidden in dock tabs cost nothing while the user steers.
- :func:`view_layer`, :func:`layer_sites`: which layer a view shows, and what that layer records.
"""
from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtWidgets import QLabel, QStackedWidget, QWidget

from engine.probes import parse_probe

_VISIBLE = {"\n": "⏎", "\r": "␍", "\t": "⇥", " ": "␣", "\x00": "␀"}


def visible(piece: str | None, spaces: bool = True) -> str:
    """``piece`` with whitespace and control characters shown: newline ⏎, tab ⇥, space ␣
    (only when ``spaces``), other control characters as ``\\xNN``; an empty piece as ∅."""
    if piece is None:
        return ""
    if piece == "":
        return "∅"
    out = []
    for ch in piece:
        if ch == " " and not spaces:
            out.append(" ")
        elif ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def wrapped_label(text: str = "") -> QLabel:
    """A label for a view's title or status line: plain text (never read as HTML), wrapped."""
    label = QLabel(text)
    label.setTextFormat(Qt.PlainText)
    label.setWordWrap(True)
    return label


class MessageStack(QStackedWidget):
    """Shows either ``content`` or a centred message (grey, word-wrapped)."""

    def __init__(self, content: QWidget, parent=None):
        super().__init__(parent)
        self.content = content
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignCenter)
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #888; padding: 12px;")
        self.addWidget(content)
        self.addWidget(self.label)

    def sizeHint(self) -> QSize:
        """Modest: a plot takes whatever room its dock has.  pyqtgraph's own hint (600 px wide)
        made the dock area widen a column, squeezing the middle one, each time a result came in."""
        return QSize(320, 240)

    def show_message(self, text: str):
        self.label.setText(text)
        self.setCurrentWidget(self.label)

    def show_content(self):
        self.label.setText("")
        self.setCurrentWidget(self.content)

    def message(self) -> str:
        """The message shown, or "" while the content is shown."""
        return self.label.text() if self.currentWidget() is self.label else ""


def on_screen(widget: QWidget) -> bool:
    """Shown and not covered: a view in a dock tab behind another tab is "visible" to Qt but has
    no visible region."""
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


class LazyRefresh(QObject):
    """``request()`` calls ``fn`` at once when ``widget`` is visible, otherwise on its next
    show event; ``flush()`` runs a pending refresh now (before an export, say)."""

    def __init__(self, widget: QWidget, fn):
        super().__init__(widget)
        self._widget = widget
        self._fn = fn
        self.pending = False
        widget.installEventFilter(self)

    def request(self):
        if on_screen(self._widget):
            self.pending = False
            self._fn()
        else:
            self.pending = True

    def flush(self):
        if self.pending:
            self.pending = False
            self._fn()

    def eventFilter(self, obj, event):
        if obj is self._widget and event.type() == QEvent.Show and self.pending:
            self.pending = False
            self._fn()
        return False


def no_model_or_trace(session) -> str | None:
    """The message for a view that has nothing to show yet, or None."""
    if session.model is None:
        return "No model loaded. Open a checkpoint with File ▸ Open."
    if session.trace is None:
        return computing_message(session) or "No trace yet: type or open an input to run the model."
    return None


def computing_message(session) -> str | None:
    """The message "Computing…", with the run's progress, while a run is under way; else None."""
    if not getattr(session, "computing", False):
        return None
    done, total = getattr(session, "run_progress", (0, 0))
    if total > 0:
        return f"Computing… {100 * min(done, total) // total} %"
    return "Computing…"


def view_layer(session) -> int | None:
    """The layer of the selected probe; for a probe outside the layers (``embed``,
    ``logits``) the top layer; None when the model has no layers."""
    layer, _ = parse_probe(session.probe or "")
    layers = sorted({s.layer for s in session.model.probe_specs() if s.layer is not None}) if session.model else []
    if layer is not None and layer in layers:
        return layer
    return layers[-1] if layers else None


def layer_sites(session, layer: int) -> list[str]:
    """The probe sites a layer of the session's model records, in table order."""
    if session.model is None:
        return []
    return [s.site for s in session.model.probe_specs() if s.layer == layer]


class TraceKey:
    """A cache key for a trace that survives re-runs: equal for the same trace object, and for
    two traces without interventions from the same model on the same input (a clean re-run,
    which the engine guarantees to reproduce exactly).  The session makes a new clean trace on
    every run, also when only the interventions changed; this key lets a view keep what it
    computed from the clean trace (PCA axes, a ranking) across those runs."""

    __slots__ = ("trace", "model", "_content")

    def __init__(self, model, trace):
        self.trace, self.model = trace, model
        self._content = None
        if trace is not None and not trace.interventions:
            inputs = None if trace.inputs is None else trace.inputs.tobytes()
            self._content = (trace.n_tokens, trace.tokens.tobytes(), trace.offsets.tobytes(), inputs,
                             tuple(trace.arrays))

    def matches(self, model, trace) -> bool:
        if trace is self.trace:
            return True
        if trace is None or self._content is None or model is not self.model or trace.interventions:
            return False
        other = TraceKey(model, trace)
        return other._content == self._content


def legend_below(plot_item, columns: int = 4):
    """A legend for ``plot_item`` in a row of its own under the bottom axis, so it never covers
    the data (and is part of the plot when it is exported)."""
    import pyqtgraph as pg

    legend = pg.LegendItem(colCount=columns)
    plot_item.layout.addItem(legend, 4, 1)
    plot_item.legend = legend  # PlotItem.addItem adds named items to it, as with addLegend
    return legend
