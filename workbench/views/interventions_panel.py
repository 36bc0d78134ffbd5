"""Intervention panel: the list of interventions and an editor.  Editing the selected one (the
value slider included) re-runs at once from the prefix cache; the list saves to and loads from
JSON."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout,
                               QHBoxLayout, QHeaderView, QLineEdit, QPushButton, QSlider, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from engine.errors import SeqScopeError
from engine.interventions import OPS, Intervention, PatchSource, Span, load_interventions, save_interventions

from ..reporting import error_sentence

SLIDER_SCALE = 100  # slider ticks per unit of value


def parse_positions(text: str):
    """``all`` | ``10:`` | ``10:20`` | ``3, 5, 8`` -> positions for an Intervention."""
    text = text.strip().lower()
    if text in ("", "all", "*"):
        return None
    if ":" in text:
        a, b = text.split(":", 1)
        return Span(int(a) if a.strip() else 0, int(b) if b.strip() else None)
    return [int(p) for p in text.replace(" ", ",").split(",") if p]


def format_positions(positions) -> str:
    if positions is None:
        return "all"
    if isinstance(positions, Span):
        return f"{positions.start}:{'' if positions.stop is None else positions.stop}"
    return ", ".join(str(p) for p in positions)


def parse_units(text: str):
    text = text.strip().lower()
    if text in ("", "all", "*"):
        return None
    return [int(u) for u in text.replace(" ", ",").split(",") if u]


def format_value(iv: Intervention) -> str:
    v = iv.value
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, PatchSource):
        return f"from {v.file}"
    if isinstance(v, tuple):
        return "[" + ", ".join(f"{x:g}" for x in v[:4]) + (", …]" if len(v) > 4 else "]")
    return f"array {getattr(v, 'shape', '')}"


class InterventionsPanel(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.plot_item = None
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["probe", "op", "value", "positions", "units"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)  # all five fit the column
        self.table.itemSelectionChanged.connect(self._row_selected)

        self.probe = QComboBox()
        self.op = QComboBox()
        self.op.addItems(OPS)
        self.value = QDoubleSpinBox()
        self.value.setRange(-1000.0, 1000.0)
        self.value.setDecimals(3)
        self.value.setSingleStep(0.1)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(-5 * SLIDER_SCALE, 5 * SLIDER_SCALE)
        self.positions = QLineEdit("all")
        self.positions.setPlaceholderText("all | 10: | 10:20 | 3, 5, 8")
        self.units = QLineEdit("all")
        self.units.setPlaceholderText("all | 3, 7")
        form = QFormLayout()
        form.addRow("probe", self.probe)
        form.addRow("op", self.op)
        value_row = QHBoxLayout()
        value_row.addWidget(self.value)
        value_row.addWidget(self.slider, 1)
        form.addRow("value", value_row)
        form.addRow("positions", self.positions)
        form.addRow("units", self.units)

        self.add_selection = QPushButton("Add for selected unit")
        self.add_selection.setToolTip("set the selected unit of the selected probe to 0 from the cursor step on")
        self.add = QPushButton("Add")
        self.remove = QPushButton("Remove")
        self.clear = QPushButton("Clear")
        self.save = QPushButton("Save…")
        self.load = QPushButton("Load…")
        buttons = QGridLayout()  # two rows of three: the panel stays narrow beside the plots
        for k, b in enumerate((self.add_selection, self.add, self.remove, self.clear, self.save, self.load)):
            buttons.addWidget(b, k // 3, k % 3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.table, 1)
        layout.addLayout(form)
        layout.addLayout(buttons)

        self.add_selection.clicked.connect(self._add_for_selection)
        self.add.clicked.connect(self._add)
        self.remove.clicked.connect(self._remove)
        self.clear.clicked.connect(lambda: session.set_interventions([]))
        self.save.clicked.connect(self._save)
        self.load.clicked.connect(self._load)
        self.slider.valueChanged.connect(self._slider_moved)
        self.value.valueChanged.connect(self._value_edited)
        for w in (self.probe, self.op):
            w.currentIndexChanged.connect(lambda _i: self._edited())
        for w in (self.positions, self.units):
            w.editingFinished.connect(self._edited)
        self._syncing = False
        session.model_changed.connect(self._model_changed)
        session.interventions_changed.connect(self._list_changed)

    # -- session -> widgets --------------------------------------------------------------------
    def _model_changed(self):
        self._syncing = True
        self.probe.clear()
        self.probe.addItems(self.session.probe_names())
        if self.session.probe:
            self.probe.setCurrentText(self.session.probe)
        self._syncing = False

    def _list_changed(self):
        ivs = self.session.interventions
        row = self.table.currentRow()
        self._syncing = True
        self.table.setRowCount(len(ivs))
        for r, iv in enumerate(ivs):
            cells = [iv.probe, iv.op, format_value(iv), format_positions(iv.positions),
                     "all" if iv.units is None else ", ".join(map(str, iv.units))]
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        if 0 <= row < len(ivs):
            self.table.selectRow(row)
        self._syncing = False

    def _row_selected(self):
        if self._syncing:
            return
        row = self.table.currentRow()
        if not 0 <= row < len(self.session.interventions):
            return
        iv = self.session.interventions[row]
        self._syncing = True
        self.probe.setCurrentText(iv.probe)
        self.op.setCurrentText(iv.op)
        if isinstance(iv.value, float):
            self.value.setValue(iv.value)
            self.slider.setValue(int(round(iv.value * SLIDER_SCALE)))
        self.positions.setText(format_positions(iv.positions))
        self.units.setText("all" if iv.units is None else ", ".join(map(str, iv.units)))
        self._syncing = False

    # -- widgets -> session -----------------------------------------------------------------------
    def intervention_from_editor(self) -> Intervention:
        op = self.op.currentText()
        value = None if op == "zero" else self.value.value()
        if op == "patch":
            clean = self.session.clean_trace
            if clean is None or self.probe.currentText() not in clean.arrays:
                raise SeqScopeError("patch takes the clean run's activations; run the model first")
            value = clean[self.probe.currentText()]
        return Intervention(self.probe.currentText(), op, value, parse_positions(self.positions.text()),
                            parse_units(self.units.text()))

    def _try(self, action):
        try:
            action()
        except ValueError as exc:  # a typed position or unit that is not a number
            if not isinstance(exc, SeqScopeError):
                exc = SeqScopeError(f"positions and units are numbers such as 3, 5 or 2:9 ({exc})")
            self.session.error.emit(error_sentence("Intervention not applied", exc))
        except Exception as exc:  # noqa: BLE001 - files, the engine, or a bug: one sentence, details logged
            self.session.error.emit(error_sentence("Intervention not applied", exc))

    def _add(self):
        self._try(lambda: self.session.add_intervention(self.intervention_from_editor()))
        self.table.selectRow(len(self.session.interventions) - 1)

    def _add_for_selection(self):
        s = self.session
        if s.probe is None:
            return
        self._try(lambda: s.add_intervention(Intervention(s.probe, "set", 0.0, Span(s.step), s.units[:1])))
        self.table.selectRow(len(s.interventions) - 1)

    def _remove(self):
        row = self.table.currentRow()
        if 0 <= row < len(self.session.interventions):
            self.session.remove_intervention(row)

    def _edited(self):
        """Editor changed: replace the selected intervention (live steering)."""
        if self._syncing:
            return
        row = self.table.currentRow()
        if 0 <= row < len(self.session.interventions):
            self._try(lambda: self.session.replace_intervention(row, self.intervention_from_editor()))

    def _slider_moved(self, ticks: int):
        if self._syncing:
            return
        self._syncing = True
        self.value.setValue(ticks / SLIDER_SCALE)
        self._syncing = False
        self._edited()

    def _value_edited(self, value: float):
        if self._syncing:
            return
        self._syncing = True
        self.slider.setValue(int(round(value * SLIDER_SCALE)))
        self._syncing = False
        self._edited()

    def _save(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save interventions", "interventions.json", "JSON (*.json)")
        if path:
            self._try(lambda: save_interventions(path, self.session.interventions))

    def _load(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load interventions", "", "JSON (*.json)")
        if path:
            self._try(lambda: self.session.set_interventions(load_interventions(path)))
