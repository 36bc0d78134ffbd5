"""Start the workbench: ``seqscope [MODEL] [--input FILE] [--project FILE]``.

With no model, it opens the bundled example (``assets/models/char-lstm-python``) on its sample
input, when the example models are installed beside the code."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .examples import default_example

_STARTED = time.perf_counter()


def default_model() -> tuple[Path | None, Path | None]:
    """The bundled default model and its sample input, when they exist."""
    ex = default_example()
    return (None, None) if ex is None else (ex.model, ex.sample)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="seqscope", description="SeqScope workbench")
    ap.add_argument("model", nargs="?", help="checkpoint file or folder (default: the bundled example)")
    ap.add_argument("--input", help="a text or numeric input file to open")
    ap.add_argument("--project", help="a saved SeqScope project to restore")
    ap.add_argument("--probe", help="the probe to show first, e.g. layers.1.c")
    ap.add_argument("--unit", type=int, help="the unit to select first")
    ap.add_argument("--step", type=int, help="the step to put the cursor on")
    ap.add_argument("--screenshot", help=argparse.SUPPRESS)  # render once to PNG, then quit
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        print("seqscope: no display found; running offscreen (set DISPLAY to see the window)", file=sys.stderr)
    import pyqtgraph as pg
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from engine.models.kernel_warmup import start_warm_up

    from .desktop import window_icon
    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("SeqScope")
    app.setWindowIcon(window_icon())
    start_warm_up()  # numba's compiled loops, loaded in the background before the first edit
    pg.setConfigOptions(antialias=False, background="w", foreground="k")
    window = MainWindow()
    model, sample = (Path(args.model), None) if args.model else default_model()
    s = window.session
    if args.probe:
        s.probe = args.probe  # kept when the model has it
    if args.unit is not None:
        s.units = [args.unit]
    if args.step is not None:
        s.trace_changed.connect(lambda: s.set_step(args.step))
    if args.project:
        window.open_project(args.project)
    elif model is not None:
        window.open_model(model)
        inp = args.input or sample
        if inp:
            window.open_input(inp)
    elif args.input:
        window.open_input(args.input)
    window.show()
    if os.environ.get("SEQSCOPE_TIMING"):  # how long until the window shows a trace
        window.session.trace_changed.connect(
            lambda: print(f"seqscope: first trace after {time.perf_counter() - _STARTED:.2f} s", file=sys.stderr))
    if args.screenshot:
        def shoot():
            window.grab().save(args.screenshot)
            app.quit()

        def wait_for_trace():
            window.session.trace_changed.connect(lambda: QTimer.singleShot(1500, shoot))

        wait_for_trace()
        QTimer.singleShot(60_000, shoot)
    return app.exec()
