"""Compare: the current trace against a second one, side by side or as a difference.

The second trace is a trace file (another model with the same probe names, another checkpoint)
opened here, or the session's own trace without interventions ("clean vs steered").  Both must
read the same input; they are aligned by token (engine.analysis.compare, which refuses in words
otherwise).  The map shows the chosen probe, units (y) by tokens (x): this trace over the other
one, or this minus the other.  Loading and aligning run on the worker thread.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.analysis.compare import compare

from ._background import BackgroundTask, save_csv, status_row
from ._common import MessageStack, no_model_or_trace, wrapped_label
from .colors import DIVERGING, color_scale

MODES = ("side by side", "difference")


class CompareView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.comparison = None
        self.other_name = ""
        self._other = None  # the other trace, or "clean" for the session's clean trace
        self.open_button = QPushButton("Open trace…")
        self.open_button.clicked.connect(self.choose_file)
        self.clean_button = QPushButton("Clean vs steered")
        self.clean_button.setToolTip("compare the trace with interventions against the one without")
        self.clean_button.clicked.connect(self.compare_clean)
        self.probe = QComboBox()
        self.probe.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.csv_button = QPushButton("CSV…")
        self.csv_button.clicked.connect(lambda: save_csv(self, "compare.csv", self.csv_rows()))
        self.task = BackgroundTask(session, "compare", self)
        self.task.done.connect(self._compared)
        self.task.failed.connect(self._failed)
        row = QHBoxLayout()
        for w in (self.open_button, self.clean_button):
            row.addWidget(w)
        row.addStretch(1)
        row2 = QHBoxLayout()
        for w in (QLabel("probe"), self.probe, self.mode):
            row2.addWidget(w)
        row2.addStretch(1)
        row2.addWidget(self.csv_button)
        self.status = wrapped_label()
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "token")
        self.plot_item.setLabel("left", "unit")
        for axis in ("bottom", "left"):
            self.plot_item.getAxis(axis).enableAutoSIPrefix(False)
        self.plot_item.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot_item.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=DIVERGING, interactive=False, width=12)
        self.colorbar.setImageItem(self.image, insert_in=self.plot_item)
        self.divider = pg.InfiniteLine(angle=0, pen=pg.mkPen((0, 0, 0), width=2))
        self.plot_item.addItem(self.divider)
        self.stack = MessageStack(self.plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(row)
        layout.addLayout(row2)
        layout.addLayout(status_row(self.status, self.task.widget))
        layout.addWidget(self.stack, 1)
        self.probe.currentIndexChanged.connect(lambda _i: self.redraw())
        self.mode.currentIndexChanged.connect(lambda _i: self.redraw())
        session.model_changed.connect(self._reset)
        session.trace_changed.connect(self._trace_changed)
        self._reset()

    # -- choosing the other trace --------------------------------------------------------------
    def _reset(self):
        self.comparison, self._other, self.other_name = None, None, ""
        self.probe.clear()
        self._trace_changed()

    def _trace_changed(self):
        msg = no_model_or_trace(self.session)
        if msg is not None:
            self.stack.show_message(msg)
            return
        if self._other is not None:
            self._start(self._other, self.other_name)  # the current trace changed: compare again
        else:
            self.stack.show_message("Open a second trace of the same input (another model or checkpoint), or "
                                    "compare this run with and without its interventions.")

    def choose_file(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open a trace to compare", "", "SeqScope traces (*.h5 *.hdf5)")
        if path:
            self.compare_file(path)

    def compare_file(self, path: str):
        self._start(str(path), str(path))

    def compare_clean(self):
        self._start("clean", "the run without interventions")

    def _start(self, other, name: str):
        s = self.session
        if s.trace is None:
            return
        self._other, self.other_name = other, name
        a = s.trace
        clean = s.clean_trace if s.clean_trace is not None else s.trace

        def job(should_stop, progress):
            from engine import load_trace

            b = clean if other == "clean" else load_trace(other)
            return compare(a, b)

        self.status.setText(f"comparing with {name} …")
        self.task.start(job)

    def _failed(self, message: str):
        self.comparison = None
        self.status.setText("")
        self.stack.show_message(f"Cannot compare with {self.other_name}: {message}")

    def _compared(self, cmp):
        self.comparison = cmp
        keep = self.probe.currentText() or self.session.probe
        self.probe.blockSignals(True)
        self.probe.clear()
        self.probe.addItems(list(cmp.probes))
        if keep in cmp.probes:
            self.probe.setCurrentText(keep)
        self.probe.blockSignals(False)
        skipped = f"; not compared: {', '.join(cmp.skipped)}" if cmp.skipped else ""
        self.status.setText(f"this trace vs {self.other_name}: {cmp.alignment.describe()}, "
                            f"{len(cmp.probes)} probes{skipped}")
        self.stack.show_content()
        self.redraw()

    # -- drawing -----------------------------------------------------------------------------
    def shown(self) -> np.ndarray | None:
        """[units, tokens] as drawn: this trace over the other (a blank row between), or a - b."""
        cmp, probe = self.comparison, self.probe.currentText()
        if cmp is None or probe not in cmp.probes:
            return None
        n = cmp.a.n_tokens
        if self.mode.currentText() == "difference":
            return cmp.difference(probe).reshape(n, -1).T
        a, b = (v.reshape(n, -1).T.astype(np.float32) for v in cmp.values(probe))
        return np.concatenate([a, np.full((1, n), np.nan, dtype=np.float32), b])

    def redraw(self):
        img = self.shown()
        if img is None:
            self.image.clear()
            return
        low, high, cmap = color_scale(img)
        self.image.setImage(np.nan_to_num(img), levels=(low, high), autoLevels=False)
        self.image.setLookupTable(cmap.getLookupTable(0.0, 1.0, 256))
        self.colorbar.setColorMap(cmap)
        self.colorbar.setLevels((low, high))
        self.image.setRect(-0.5, -0.5, img.shape[1], img.shape[0])
        side = self.mode.currentText() == "side by side"
        self.divider.setVisible(side)
        width = (img.shape[0] - 1) // 2 if side else img.shape[0]
        self.divider.setValue(width)
        probe = self.probe.currentText()
        self.plot_item.setTitle(f"{probe}: this trace − the other" if not side else
                                f"{probe}: this trace (top), the other (bottom)")
        left = self.plot_item.getAxis("left")
        if side:  # each half counts its own units
            ticks = [(0, "0"), (width // 2, "this"), (width + 1, "0"), (width + 1 + width // 2, "other")]
            left.setTicks([ticks])
            left.setLabel("unit")  # the title says which half is which
        else:
            left.setTicks(None)
            left.setLabel("unit")
        self.plot_item.autoRange()

    def csv_rows(self) -> list[list]:
        cmp, probe = self.comparison, self.probe.currentText()
        if cmp is None or probe not in cmp.probes:
            return [["token"]]
        n = cmp.a.n_tokens
        a, b = (v.reshape(n, -1) for v in cmp.values(probe))
        units = a.shape[1]
        rows = [["token", "text"] + [f"{probe}[{u}] {w}" for u in range(units) for w in ("a", "b", "a-b")]]
        text = cmp.a.token_text
        for t in range(n):
            vals = []
            for u in range(units):
                vals += [float(a[t, u]), float(b[t, u]), float(a[t, u]) - float(b[t, u])]
            rows.append([t, text[t] if text is not None else ""] + vals)
        return rows
