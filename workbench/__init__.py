"""SeqScope's desktop workbench (PySide6 + pyqtgraph) over the Qt-free ``engine``."""
