"""Neuron heatmap: tokens (x) × units (y) of the selected probe, on a diverging colour map
centred on 0, with a colour bar, zoom/pan, a hover read-out, and click-to-select."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ._common import LazyRefresh, computing_message, visible
from .colors import DIVERGING, color_scale


class HeatmapView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._lazy = LazyRefresh(self, self.refresh)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "token")
        self.plot_item.setLabel("left", "unit")
        for axis in ("bottom", "left"):  # steps and units are counts: never "token (x0.001)"
            self.plot_item.getAxis(axis).enableAutoSIPrefix(False)
        self.plot_item.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")  # rows = units, columns = tokens
        self.plot_item.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=DIVERGING, interactive=False, width=12)
        self.colorbar.setImageItem(self.image, insert_in=self.plot_item)
        self.cursor = pg.InfiniteLine(angle=90, pen=pg.mkPen((20, 20, 20), width=1))
        self.unit_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((20, 20, 20), width=1, style=Qt.DashLine))
        self.plot_item.addItem(self.cursor)
        self.plot_item.addItem(self.unit_line)
        self.readout = QLabel(" ")
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.difference = QCheckBox("difference (steered − clean)")
        self.difference.setToolTip("show how the interventions changed each value")
        self.difference.toggled.connect(self._lazy.request)
        top = QHBoxLayout()
        top.addWidget(self.readout, 1)
        top.addWidget(self.difference)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        self._values: np.ndarray | None = None  # [tokens, units] as shown
        self._shown_key = None
        self._level_key, self._level_value = None, None  # the clean trace's colour range, cached
        self._scale_shown = None  # (levels, colour map, title) last shown
        self.plot.scene().sigMouseMoved.connect(self._hover)
        self.plot.scene().sigMouseClicked.connect(self._click)
        session.trace_changed.connect(self._lazy.request)
        session.selection_changed.connect(self._lazy.request)
        session.model_changed.connect(self._reset_view)
        session.computing_changed.connect(self._computing_changed)

    # -- data ------------------------------------------------------------------------------
    def values(self) -> np.ndarray | None:
        """What the map shows: the selected probe, [tokens, units] (flattened past the unit axis)."""
        s = self.session
        if s.trace is None or s.probe is None or s.probe not in s.trace.arrays:
            return None
        a = s.trace[s.probe]
        if self.difference.isChecked() and s.clean_trace is not None and s.probe in s.clean_trace.arrays:
            a = a - s.clean_trace[s.probe]
        return np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float32)

    def _computing_changed(self):
        if self.session.trace is None:
            self.readout.setText(computing_message(self.session) or "no trace yet")

    def refresh(self):
        s = self.session
        key = (id(s.trace), s.probe, self.difference.isChecked())
        if key != self._shown_key:
            self._shown_key = key
            self._values = self.values()
            if self._values is None:
                self.image.clear()
                self.readout.setText((computing_message(s) or "no trace yet") if s.trace is None else
                                     f"{s.probe} was not recorded")
            else:
                self.readout.setText("hover for values · click to select a unit and step")
                low, high, cmap = self._levels()
                self.image.setImage(self._values.T, levels=(low, high), autoDownsample=True)
                self._set_scale_and_title((low, high), cmap,
                                          f"{s.probe}{'  (steered − clean)' if self.difference.isChecked() else ''}")
        self.cursor.setPos(s.step + 0.5)
        unit = s.units[0] if s.units else 0
        self.unit_line.setPos(unit + 0.5)

    def _set_scale_and_title(self, levels, cmap, title):
        """Colour bar and title, touched only when they change: each sets off a re-layout and a
        repaint of the plot's frame, and while steering they stay the same."""
        if (levels, cmap, title) == self._scale_shown:
            return
        self._scale_shown = (levels, cmap, title)
        self.colorbar.setColorMap(cmap)
        self.colorbar.setLevels(levels)
        self.plot_item.setTitle(title)

    def _levels(self):
        """The colour range: the clean trace's, so steering does not re-scale the colours
        (before and after stay comparable) and a slider drag skips the percentile; the
        difference's own range in difference mode."""
        s = self.session
        if self.difference.isChecked() or s.clean_trace is None or s.probe not in s.clean_trace.arrays:
            return color_scale(self._values)
        key = (id(s.clean_trace), s.probe)
        if self._level_key != key:
            clean = s.clean_trace[s.probe]
            self._level_key, self._level_value = key, color_scale(clean.reshape(clean.shape[0], -1))
        return self._level_value

    def _reset_view(self):
        self._shown_key = None
        self._scale_shown = None
        self.plot_item.enableAutoRange()

    # -- mouse -----------------------------------------------------------------------------
    def _cell_at(self, scene_pos):
        if self._values is None or not self.plot_item.sceneBoundingRect().contains(scene_pos):
            return None
        p = self.plot_item.vb.mapSceneToView(scene_pos)
        t, u = int(np.floor(p.x())), int(np.floor(p.y()))
        if 0 <= t < self._values.shape[0] and 0 <= u < self._values.shape[1]:
            return t, u
        return None

    def _hover(self, scene_pos):
        cell = self._cell_at(scene_pos)
        if cell is None:
            return
        t, u = cell
        text = self.session.trace.token_text
        tok = f" {visible(text[t])!r}" if text is not None else ""
        self.readout.setText(f"token {t}{tok} · unit {u} · {self._values[t, u]:+.4f}")

    def _click(self, event):
        if event.button() != Qt.LeftButton:
            return
        cell = self._cell_at(event.scenePos())
        if cell is not None:
            t, u = cell
            self.session.set_step(t)
            self.session.select_unit(u)

    def flush(self):
        """Bring the view up to date now (before an export, or when its tab is raised)."""
        self._lazy.flush()
