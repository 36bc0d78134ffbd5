import subprocess
import sys


def test_engine_imports_no_qt():
    code = (
        "import sys, engine, engine.run, engine.loading, engine.hdf5, engine.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'workbench'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
