"""Workbench latency: from an intervention edit (a slider move) to every view updated, and the
heatmap's redraw time at 4,096 tokens × 512 units.

    .venv/bin/python benchmarks/latency.py            # offscreen, bundled char-LSTM, 2,000 chars
    .venv/bin/python benchmarks/latency.py --against /tmp/base   # side by side with another checkout

Prints the median and 95th percentile over 50 edits.  Each edit goes through the real path:
the intervention panel's value box -> Session -> Runner thread (prefix-cache re-run of the
steered trace; the clean one is kept) -> trace_changed -> every view refreshed -> one paint pass.

``--against DIR`` (a checkout of another revision, e.g. from ``git archive REV | tar -x -C DIR``)
builds a second window from that tree's ``engine`` and ``workbench`` (copied to a temporary
folder as ``engine_base``/``workbench_base``) and alternates the edits between the two windows,
in one process: on a shared machine, the fairest before/after.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def build_window(main_window_class=None):
    import pyqtgraph as pg
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from workbench.app import default_model
    from workbench.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    pg.setConfigOptions(antialias=False, background="w", foreground="k")
    window = (main_window_class or MainWindow)(settings=QSettings(os.devnull, QSettings.IniFormat))
    window.resize(1500, 950)
    window.show()
    return app, window, default_model()


def import_other_tree(root: Path):
    """``engine`` and ``workbench`` of the checkout at ``root``, imported as ``engine_base`` and
    ``workbench_base`` (copies with their imports renamed), so both versions live in one process."""
    import re
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="seqscope-against-"))
    for name in ("engine", "workbench"):
        shutil.copytree(root / name, tmp / f"{name}_base", ignore=shutil.ignore_patterns("__pycache__"))
    for f in tmp.rglob("*.py"):
        text = f.read_text()
        for name in ("engine", "workbench"):
            text = re.sub(rf"\b{name}(?=[.\s,;)]|$)", f"{name}_base", text, flags=re.M)
        f.write_text(text)
    sys.path.insert(0, str(tmp))
    import engine_base
    from workbench_base.main_window import MainWindow

    return engine_base, MainWindow


def prepare(app, window, model, eng, text, edit):
    """Run ``model`` on ``text`` in ``window`` and add the intervention that the edits drag
    (made with ``eng``, the engine the window uses); returns (value box, list that grows by one
    per trace_changed)."""
    s = window.session
    s.text = text
    done = []
    s.trace_changed.connect(lambda: done.append(time.perf_counter()))
    s.set_model(model, model.source)
    wait_for(app, lambda: len(done) >= 1)
    probe = "layers.1.c" if "layers.1.c" in s.probe_names() else s.probe
    positions = {"from-step": eng.Span(1000), "one-step": [1000], "all-steps": None}[edit]
    s.add_intervention(eng.Intervention(probe, "set", 0.0, positions, [0]))
    wait_for(app, lambda: len(done) >= 2)
    panel = window.views["Interventions"]
    panel.table.selectRow(0)
    app.processEvents()
    return panel.value, done


def timed_edit(app, box, done, k):
    """One edit, as a slider drag makes it, to every view updated and painted; seconds."""
    n = len(done)
    t0 = time.perf_counter()
    box.setValue(0.1 * (k % 20) - 1.0 + 0.001 * k)
    wait_for(app, lambda: len(done) > n)
    app.processEvents()  # the paint pass
    return time.perf_counter() - t0


def report(label, latencies):
    ms = [x * 1e3 for x in latencies]
    print(f"{label}: median {statistics.median(ms):.1f} ms, p95 {percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms")


def wait_for(app, predicate, timeout=120.0):
    end = time.perf_counter() + timeout
    while not predicate():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() > end:
            raise TimeoutError("the workbench did not answer")


def main():
    import argparse

    import engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edit", choices=("from-step", "one-step", "all-steps"), default="from-step",
                    help="the intervention dragged: set a unit from step 1000 on, at step 1000 only, or at every step")
    ap.add_argument("--against", type=Path, metavar="DIR",
                    help="another checkout to measure side by side (edits alternate between the two)")
    ap.add_argument("--edits", type=int, default=50, help="edits measured (per window)")
    args = ap.parse_args()
    from workbench.app import default_model

    model_path, sample = default_model()
    if model_path is None and args.against:
        raise SystemExit("--against needs the bundled char-LSTM (assets/models)")
    text_source = Path(sample).read_text() if sample else Path(engine.__file__).with_name("run.py").read_text()
    text = (text_source * 4)[:2000]
    runs = {}
    if args.against:
        # the other tree's window ready first: its worker thread starts with torch's default threads
        engine_base, BaseWindow = import_other_tree(args.against.resolve())
        app, base_window, _ = build_window(BaseWindow)
        base_model = engine_base.load(model_path, device="cpu")
        runs[str(args.against)] = prepare(app, base_window, base_model, engine_base, text, args.edit)
    app, window, _ = build_window()
    if model_path is None:
        from engine.models.stack import from_torch
        from engine.tokenizers import CharVocab

        print("bundled char-LSTM not found: using random weights of the same shape (2 x 256, embedding 64)")
        chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
        torch.manual_seed(0)
        model = from_torch(torch.nn.LSTM(64, 256, 2), torch.nn.Embedding(len(chars), 64),
                           torch.nn.Linear(256, len(chars)), tokenizer=CharVocab(chars))
    else:
        model = engine.load(model_path, device="cpu")
    runs["this tree"] = prepare(app, window, model, engine, text, args.edit)
    print(f"model: {model.info()['architecture']}, {model.parameter_count:,} parameters; input {len(text)} characters")
    latencies = {name: [] for name in runs}
    for k in range(args.edits):
        order = list(runs) if k % 2 else list(runs)[::-1]  # neither always goes first
        for name in order:
            latencies[name].append(timed_edit(app, *runs[name], k))
    for name, xs in latencies.items():
        where = f" [{name}]" if args.against else ""
        report(f"intervention edit ({args.edit}) -> views updated, {args.edits} edits{where}", xs)
    if args.against:
        base_window.close()

    # heatmap redraw at 4096 tokens x 512 units, fixed levels
    heat = window.views["Neuron heatmap"]
    data = np.random.default_rng(0).standard_normal((512, 4096)).astype(np.float32)
    heat.image.setImage(data, levels=(-3, 3), autoDownsample=True)
    app.processEvents()
    redraws = []
    for k in range(30):
        data[:, k] += 0.01
        t0 = time.perf_counter()
        heat.image.setImage(data, levels=(-3, 3), autoDownsample=True)
        heat.plot.viewport().repaint()
        redraws.append((time.perf_counter() - t0) * 1e3)
    print(f"heatmap redraw 4096 x 512 (setImage + repaint): median {statistics.median(redraws):.1f} ms, "
          f"p95 {percentile(redraws, 95):.1f} ms")
    window.close()


if __name__ == "__main__":
    main()
