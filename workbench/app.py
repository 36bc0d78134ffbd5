"""Start the workbench: ``seqscope [MODEL] [--input FILE] [--project FILE] [--offscreen]``.

With no model, it opens the bundled example (``assets/models/char-lstm-python``) on its sample
input, when the example models are installed beside the code; a model folder (or weights file)
with a ``sample*`` input beside it opens on that sample.  Everything that can stop the start
(a path that does not exist, no display, Qt's X11 libraries missing) is checked before Qt
starts and said in one line, with exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .examples import Example, default_example, example
from .qt_platform import display_problem

_STARTED = time.perf_counter()
PROG = "seqscope"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
HINT_TEXT = "No input yet: type one in the Input panel, or open a file (File ▸ Open input file…)"
HINT_NUMERIC = "No input yet: open a .npy or .csv file (File ▸ Open input file…) or pick a bundled sample"


def default_model() -> tuple[Path | None, Path | None]:
    """The bundled default model and its sample input, when they exist."""
    ex = default_example()
    return (None, None) if ex is None else (ex.model, ex.sample)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Open the SeqScope workbench window.")
    ap.add_argument("model", nargs="?", metavar="MODEL",
                    help="checkpoint file or folder, opened on the sample input beside it when there "
                    "is one (default: the bundled char-LSTM on its sample)")
    ap.add_argument("--input", metavar="FILE", help="a text or numeric (.npy/.csv) input file to open")
    ap.add_argument("--project", metavar="FILE", help="a saved SeqScope project to restore")
    ap.add_argument("--config", metavar="FILE",
                    help="a JSON config to load MODEL with (engine.load(..., config=...)), for a file whose "
                    "architecture SeqScope cannot tell by itself")
    ap.add_argument("--corpus", metavar="FILE",
                    help="a corpus trace (seqscope trace --corpus) to open in the Corpus view, with the model it "
                    "was recorded from unless MODEL is given")
    ap.add_argument("--probe", metavar="P", help="the probe to show first, e.g. layers.1.c")
    ap.add_argument("--unit", metavar="U", type=int, help="the unit to select first")
    ap.add_argument("--step", metavar="T", type=int, help="the step to put the cursor on")
    ap.add_argument("--offscreen", action="store_true",
                    help="run without a display (for scripts: nothing is shown)")
    ap.add_argument("--screenshot", help=argparse.SUPPRESS)  # render once to PNG, then quit
    return ap


def parse_args(argv):
    return build_parser().parse_args(argv)


def startup_problem(args, environ=None) -> str | None:
    """Why the window cannot start, in one line, or None.  Checked before Qt starts; with
    ``--offscreen`` the Qt platform is set to ``offscreen`` here."""
    environ = os.environ if environ is None else environ
    for flag, value in (("", args.model), ("--input ", args.input), ("--project ", args.project),
                        ("--corpus ", args.corpus), ("--config ", args.config)):
        if value is not None and not Path(value).exists():
            return f"{flag}{value}: no such file or folder"
    if args.config is not None:
        from engine.errors import SeqScopeError
        from engine.loading.config_file import read_config_file

        if args.model is None:
            return "--config goes with a MODEL: the config is how to read that file"
        try:
            read_config_file(args.config)
        except SeqScopeError as exc:
            return f"--config: {exc}"
    if args.offscreen:
        environ["QT_QPA_PLATFORM"] = "offscreen"
        return None
    return display_problem(environ)


def example_for(path: Path) -> Example | None:
    """The model at ``path`` with the sample inputs found beside it (as the bundled examples
    keep them: ``sample*`` files in the model's folder), or None when there are none."""
    if not path.is_dir() and path.suffix.lower() not in WEIGHT_SUFFIXES:
        return None
    folder = path if path.is_dir() else path.parent
    found = example(folder)
    if found is None or not found.samples:
        return None
    return Example(found.name, path, found.samples)


def hint_when_no_input(window) -> None:
    """Each time a model is shown without an input, say how to give it one."""
    s = window.session

    def check():
        if s.model is not None and s.text is None and s.values is None:
            window.statusBar().showMessage(HINT_TEXT if s.model.takes_tokens else HINT_NUMERIC)

    s.model_changed.connect(check)


def build_window(args, settings=None):
    """The main window, opening what ``args`` name (a QApplication must exist)."""
    from .main_window import MainWindow

    window = MainWindow(settings=settings)
    hint_when_no_input(window)
    s = window.session
    if args.probe:
        s.probe = args.probe  # kept when the model has it
    if args.unit is not None:
        s.units = [args.unit]
    if args.step is not None:
        s.trace_changed.connect(lambda: s.set_step(args.step))
    if args.project:
        window.open_project(args.project)
        return window
    if args.corpus and not args.model:
        s.open_corpus(args.corpus)  # and the model it was recorded from
        return window
    if args.corpus:  # the model given, once it is open
        def corpus_once():
            s.model_changed.disconnect(corpus_once)
            s.open_corpus(args.corpus, with_model=False)

        s.model_changed.connect(corpus_once)
    if args.model:
        model = Path(args.model).absolute()  # File ▸ Open recent works from any folder
        ex = example_for(model)
    else:
        ex = default_example()
        model = ex.model if ex is not None else None
    from engine.loading.config_file import read_config_file

    config = read_config_file(args.config) if args.config else None  # checked by startup_problem
    if model is None:
        if args.input:
            window.open_input(args.input)
    elif args.input:
        window.open_model(model, config=config)
        window.open_input(args.input)
    elif ex is not None:
        window.open_example(Example(ex.name, model, ex.samples), config=config)
    else:
        window.open_model(model, config=config)
    return window


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    problem = startup_problem(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    try:
        import pyqtgraph as pg
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
    except ImportError as exc:
        print(f"{PROG}: error: the window needs PySide6 and pyqtgraph ({exc}); "
              "the commands (seqscope --help) work without them", file=sys.stderr)
        return 2

    from engine.models.kernel_warmup import start_warm_up

    from .desktop import window_icon

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("SeqScope")
    app.setWindowIcon(window_icon())
    start_warm_up()  # numba's compiled loops, loaded in the background before the first edit
    pg.setConfigOptions(antialias=False, background="w", foreground="k")
    window = build_window(args)
    window.show()
    if os.environ.get("SEQSCOPE_TIMING"):  # how long until the window shows a trace
        window.session.trace_changed.connect(
            lambda: print(f"seqscope: first trace after {time.perf_counter() - _STARTED:.2f} s", file=sys.stderr))
    if args.screenshot:
        def shoot():
            window.grab().save(args.screenshot)
            app.quit()

        window.session.trace_changed.connect(lambda: QTimer.singleShot(1500, shoot))
        QTimer.singleShot(60_000, shoot)
    return app.exec()
