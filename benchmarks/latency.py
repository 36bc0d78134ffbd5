"""Workbench latency: from an intervention edit (a slider move) to every view updated, and the
heatmap's redraw time at 4,096 tokens × 512 units.

    .venv/bin/python benchmarks/latency.py            # offscreen, bundled char-LSTM, 2,000 chars

Prints the median and 95th percentile over 50 edits.  Each edit goes through the real path:
the intervention panel's value box -> Session -> Runner thread (prefix-cache re-run of the
clean and the steered trace) -> trace_changed -> every view refreshed -> one paint pass.
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


def build_window():
    import pyqtgraph as pg
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from workbench.app import default_model
    from workbench.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    pg.setConfigOptions(antialias=False, background="w", foreground="k")
    window = MainWindow(settings=QSettings(os.devnull, QSettings.IniFormat))
    window.resize(1500, 950)
    window.show()
    return app, window, default_model()


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
    from engine.interventions import Intervention, Span

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--edit", choices=("from-step", "one-step"), default="from-step",
                    help="the intervention dragged: set a unit from step 1000 on, or at step 1000 only")
    args = ap.parse_args()
    app, window, (model_path, sample) = build_window()
    s = window.session
    if model_path is None:
        from engine.models.stack import from_torch
        from engine.tokenizers import CharVocab

        print("bundled char-LSTM not found: using random weights of the same shape (2 x 256, embedding 64)")
        chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
        torch.manual_seed(0)
        model = from_torch(torch.nn.LSTM(64, 256, 2), torch.nn.Embedding(len(chars), 64),
                           torch.nn.Linear(256, len(chars)), tokenizer=CharVocab(chars))
        text_source = Path(engine.__file__).with_name("run.py").read_text()
    else:
        model = engine.load(model_path, device="cpu")
        text_source = Path(sample).read_text() if sample else Path(engine.__file__).with_name("run.py").read_text()
    text = (text_source * 4)[:2000]
    s.text = text
    done = []
    s.trace_changed.connect(lambda: done.append(time.perf_counter()))
    s.set_model(model, str(model_path or "random"))
    wait_for(app, lambda: len(done) >= 1)
    print(f"model: {model.info()['architecture']}, {model.parameter_count:,} parameters; input {len(text)} characters")

    probe = "layers.1.c" if "layers.1.c" in s.probe_names() else s.probe
    positions = Span(1000) if args.edit == "from-step" else [1000]
    s.add_intervention(Intervention(probe, "set", 0.0, positions, [0]))
    wait_for(app, lambda: len(done) >= 2)
    panel = window.views["Interventions"]
    panel.table.selectRow(0)
    app.processEvents()
    latencies = []
    for k in range(50):
        n = len(done)
        t0 = time.perf_counter()
        panel.value.setValue(0.1 * (k % 20) - 1.0 + 0.001 * k)  # what a slider drag does
        wait_for(app, lambda: len(done) > n)
        app.processEvents()  # the paint pass
        latencies.append(time.perf_counter() - t0)
    ms = [x * 1e3 for x in latencies]
    print(f"intervention edit ({args.edit}) -> views updated, 50 edits: median {statistics.median(ms):.1f} ms, "
          f"p95 {percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms")

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
