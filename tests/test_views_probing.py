"""The linear probe, attribution and compare views: each shows the engine function's numbers,
works off the GUI thread (the runner's thread, never the main one), can be cancelled, sends
its edits to the session ("Steer along it" adds the probe's intervention), shows refusals as
messages, and exports PNG/SVG/CSV."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis.attribution import Target, integrated_gradients
from engine.analysis.linear_probe import fit_probes, make_feature
from engine.models.stack import from_torch
from engine.tokenizers import CharVocab

pytest.importorskip("pytestqt")

from workbench.export import export_view  # noqa: E402
from workbench.session import Session  # noqa: E402
from workbench.views._background import write_csv  # noqa: E402
from workbench.views.attribution import AttributionView  # noqa: E402
from workbench.views.compare import CompareView  # noqa: E402
from workbench.views.linear_probe import LinearProbeView  # noqa: E402

CHARS = sorted(set('abcdefghijklmnopqrstuvwxyz "\n()=,'))
TEXT = 'x = "hello world"\nprint("a", b)\ny = f(x, "q")\n' * 4


@pytest.fixture
def session(qtbot):
    s = Session()
    torch.manual_seed(0)
    model = from_torch(nn.LSTM(6, 12, num_layers=2), nn.Embedding(len(CHARS), 6), nn.Linear(12, len(CHARS)),
                       tokenizer=CharVocab(CHARS))
    s.text = TEXT
    with qtbot.waitSignal(s.trace_changed, timeout=20000):
        s.set_model(model)
    yield s
    s.runner.shutdown()


def show(qtbot, view):
    qtbot.addWidget(view)
    view.resize(900, 600)
    view.show()
    return view


def test_linear_probe_view_fits_each_layer_and_steers_through_the_session(qtbot, session, tmp_path):
    view = show(qtbot, LinearProbeView(session))
    view.regex.setText('"[^"]*"')
    view.site.setCurrentText("h")
    with qtbot.waitSignal(view.task.done, timeout=20000):
        view.fit()
    want = fit_probes(session.clean_trace, make_feature(session.clean_trace, regex='"[^"]*"'), "layers.*.h")
    assert [f.probe for f in view.result.fits] == ["layers.0.h", "layers.1.h"]
    np.testing.assert_allclose([f.test_score for f in view.result.fits], [f.test_score for f in want.fits])
    assert "held out by position" in view.status.text()
    assert not session.runner.gui_thread_ran_job
    view.alpha.setValue(3.0)
    view.from_step.setValue(7)
    with qtbot.waitSignal(session.trace_changed, timeout=20000):
        view.steer()
    iv = session.interventions[-1]
    assert iv.probe == want.best.probe and iv.positions.start == 7
    np.testing.assert_allclose(iv.value, 3.0 * want.best.direction, rtol=1e-5)
    export_view(view, tmp_path / "lp.png")
    export_view(view, tmp_path / "lp.svg")
    write_csv(tmp_path / "lp.csv", view.csv_rows())
    rows = list(csv.reader(open(tmp_path / "lp.csv")))
    assert rows[1][0] == "layers.0.h" and (tmp_path / "lp.svg").stat().st_size > 0
    view.regex.setText("zzz")  # a feature that marks nothing: a message, not a crash
    view.fit()
    assert "same value" in view.stack.message()


def test_attribution_view_shows_the_engine_scores_and_cancels(qtbot, session, tmp_path):
    view = show(qtbot, AttributionView(session))
    view.step.setValue(30)
    view.method.setCurrentIndex(0)
    view.steps.setValue(8)
    view.token.setCurrentIndex(view.token.findData(3))
    with qtbot.waitSignal(view.task.done, timeout=20000):
        view.compute()
    want = integrated_gradients(session.model, TEXT, Target("logit", "logits", 3, 30), steps=8)
    np.testing.assert_allclose(view.result.scores, want.scores, atol=1e-6)
    np.testing.assert_allclose(view.image.image[0], want.scores.astype(np.float32), atol=1e-6)
    assert "completeness gap" in view.status.text()
    assert not session.runner.gui_thread_ran_job
    export_view(view, tmp_path / "at.png")
    write_csv(tmp_path / "at.csv", view.csv_rows())
    assert len(list(csv.reader(open(tmp_path / "at.csv")))) == 32
    # gradient x input also has a row per layer's state
    view.method.setCurrentIndex(1)
    with qtbot.waitSignal(view.task.done, timeout=20000):
        view.compute()
    assert view.image.image.shape == (3, 31)
    # Cancel: the task stops and no result arrives
    view.method.setCurrentIndex(2)
    view.compute()
    view.task.cancel()
    assert not view.task.widget.isVisible()
    # a unit target out of range is refused in words
    session.units = [99]
    view.what.setCurrentIndex(1)
    with qtbot.waitSignal(view.task.failed, timeout=20000):
        view.compute()
    assert "units of" in view.stack.message()


def test_compare_view_clean_vs_steered_and_a_file(qtbot, session, tmp_path):
    view = show(qtbot, CompareView(session))
    with qtbot.waitSignal(session.trace_changed, timeout=20000):
        session.add_intervention(engine.Intervention("layers.0.h", "add", 1.0, positions=[10]))
    with qtbot.waitSignal(view.task.done, timeout=20000):
        view.compare_clean()
    view.probe.setCurrentText("layers.1.h")
    view.mode.setCurrentText("difference")
    d = view.shown()
    np.testing.assert_allclose(d, (session.trace["layers.1.h"] - session.clean_trace["layers.1.h"]).T)
    assert np.all(d[:, :10] == 0) and np.any(d[:, 10:] != 0)
    view.mode.setCurrentText("side by side")
    assert view.shown().shape == (25, session.trace.n_tokens)
    export_view(view, tmp_path / "cv.png")
    write_csv(tmp_path / "cv.csv", view.csv_rows())
    # a trace of another input is refused in words
    other = engine.run(session.model, "abc")
    engine.save_trace(other, tmp_path / "other.h5")
    with qtbot.waitSignal(view.task.failed, timeout=20000):
        view.compare_file(str(tmp_path / "other.h5"))
    assert "texts differ" in view.stack.message()
