"""Probe tree: every probe point of the model, grouped by layer, with its shape and description;
selecting one makes it what the views show."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget


class ProbeTreeView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.plot_item = None
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["probe", "shape"])
        self.tree.setColumnWidth(0, 170)
        self.tree.itemClicked.connect(self._clicked)
        self.tree.currentItemChanged.connect(lambda cur, _prev: self._clicked(cur))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tree)
        self._items: dict[str, QTreeWidgetItem] = {}
        session.model_changed.connect(self.rebuild)
        session.selection_changed.connect(self._show_selection)

    def rebuild(self):
        self.tree.clear()
        self._items.clear()
        model = self.session.model
        if model is None:
            return
        groups: dict[str, QTreeWidgetItem] = {}
        for spec in model.probe_specs():
            group = "inputs / outputs" if spec.layer is None else f"layer {spec.layer}"
            if group not in groups:
                groups[group] = QTreeWidgetItem(self.tree, [group, ""])
                groups[group].setFlags(groups[group].flags() & ~Qt.ItemIsSelectable)
                groups[group].setExpanded(True)
            dims = " × ".join(f"{n} {d}" for n, d in zip(spec.shape, spec.dims[1:]))
            item = QTreeWidgetItem(groups[group], [spec.name, dims])
            item.setToolTip(0, spec.description)
            item.setToolTip(1, spec.description)
            item.setData(0, Qt.UserRole, spec.name)
            self._items[spec.name] = item
        self._show_selection()

    def _clicked(self, item, _column=0):
        if item is None:
            return
        name = item.data(0, Qt.UserRole)
        if name and name != self.session.probe:
            self.session.select_probe(name)

    def _show_selection(self):
        item = self._items.get(self.session.probe)
        if item is not None and self.tree.currentItem() is not item:
            self.tree.blockSignals(True)
            self.tree.setCurrentItem(item)
            self.tree.blockSignals(False)
