"""Test setup.

Qt must never look for a screen, so the platform is set before Qt is imported.  torch runs on
one thread: on a 2-core machine that is busy with other work, several threads per tiny op make
small models hundreds of times slower, and tests assert nothing about parallel speed.
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def window(qtbot, tmp_path):
    """A shown main window with its own settings file (no recent files from elsewhere)."""
    from PySide6.QtCore import QSettings

    from workbench.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    yield w
    w.close()
