"""The Statistics, Timescales and Dynamics views: they plot what the engine functions compute,
work off the GUI thread (the runner's worker) with Cancel, export PNG/SVG/CSV, and show a
message instead of failing where there is nothing to show."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis import decay_spectrum as DS
from engine.analysis import fixed_points as FP
from engine.analysis import jacobian as JA
from engine.analysis import state_step as SS
from engine.analysis import timescales as TS
from engine.analysis import unit_stats as U
from engine.models.stack import from_torch
from engine.tokenizers import CharVocab

pytest.importorskip("pytestqt")

from workbench.export import export_view  # noqa: E402
from workbench.session import Session  # noqa: E402
from workbench.views.dynamics import DynamicsView  # noqa: E402
from workbench.views.timescales import TimescalesView  # noqa: E402
from workbench.views.unit_stats import UnitStatsView  # noqa: E402

TEXT = "(()[[]])\n([])\n" * 6


@pytest.fixture
def session():
    s = Session()
    yield s
    s.runner.shutdown()


def char_model(cell=nn.GRU, hidden=8):
    torch.manual_seed(0)
    vocab = CharVocab(list("()[]\n"))
    return from_torch(cell(4, hidden), nn.Embedding(5, 4), nn.Linear(hidden, 5), tokenizer=vocab)


def open_on(qtbot, session, view, model, text=TEXT):
    qtbot.addWidget(view)
    view.resize(700, 600)
    view.show()
    session.set_model(model)
    session.set_text(text)
    qtbot.waitUntil(lambda: session.trace is not None, timeout=20000)
    qtbot.waitUntil(lambda: view.result is not None and not view.job.running, timeout=60000)
    assert not session.runner.gui_thread_ran_job


def test_dynamics_view_plots_the_spectral_radius_and_the_fixed_points(qtbot, session, tmp_path):
    view = DynamicsView(session)
    model = char_model()
    open_on(qtbot, session, view, model)
    step = SS.state_step(model, 0)
    sp = JA.spectra_along(step, session.clean_trace, 0)
    x, y = view.radius_curve.getData()
    np.testing.assert_array_equal(x, sp.steps)
    np.testing.assert_allclose(y, sp.spectral_radius, rtol=1e-12)
    res = view.result
    assert len(res.points) >= 1
    for p in res.points:  # every point drawn is a fixed (or slow) point of the model's own step
        u = FP.constant_input(step, session.clean_trace, model, "mean")
        speed = 0.5 * np.sum((step(p.state, u).numpy() - p.state) ** 2)
        assert speed <= FP.Q_SLOW and p.stability in ("stable", "marginal", "saddle", "unstable")
    drawn = sum(len(item.getData()[0]) for item in view.point_items.values())
    assert drawn == len(res.points)
    # exports
    for suffix in (".png", ".svg"):
        assert export_view(view, tmp_path / f"d{suffix}").stat().st_size > 0
    view.export_csv(tmp_path / "d.csv")
    rows = list(csv.reader(open(tmp_path / "d.csv")))
    assert rows[0][:3] == ["row", "index", "spectral_radius"] and len(rows) == 1 + len(sp.steps) + len(res.points)
    # another constant input starts a new search; a zero input of a token model works too
    view.constant.setEditText("zero")
    view.constant.lineEdit().returnPressed.emit()
    qtbot.waitUntil(lambda: not view.job.running and view.result is not None and view.result.constant == "zero",
                    timeout=60000)


def test_dynamics_view_cancel_and_messages(qtbot, session):
    view = DynamicsView(session)
    qtbot.addWidget(view)
    view.show()
    assert "No model" in view.message()
    model = char_model()
    session.set_model(model)
    session.set_text(TEXT)
    qtbot.waitUntil(lambda: view.job.running or view.result is not None, timeout=20000)
    if view.job.running:
        view.job.cancel()
        assert view.job.status.text() == "Cancelled." and not view.job.cancel_button.isVisible()
    # a family without a single-step form: a message, not an error
    from test_lru import make

    session.set_model(make()[0])
    session.set_text("1 2 3 4")  # a model without a vocabulary reads token ids
    qtbot.waitUntil(lambda: "not written as a single step" in view.message(), timeout=20000)


def test_timescales_view_histograms_equal_the_decay_spectrum(qtbot, session, tmp_path):
    view = TimescalesView(session)
    model = char_model(nn.LSTM)
    open_on(qtbot, session, view, model)
    [spec] = DS.decay_spectrum(model, session.clean_trace)
    np.testing.assert_allclose(view.result[0].tau, spec.tau, rtol=1e-12)
    edges, counts, _ = view.histograms[0]
    assert counts.sum() == np.isfinite(spec.tau).sum()
    x, y = view.curves[0].getData()
    np.testing.assert_allclose(y, counts)
    assert view.plot_item.ctrl.logXCheck.isChecked()  # the τ axis is logarithmic
    view.export_csv(tmp_path / "t.csv")
    assert len(list(csv.reader(open(tmp_path / "t.csv")))) == 1 + spec.tau.size
    assert export_view(view, tmp_path / "t.png").stat().st_size > 0
    # autocorrelation mode
    view.mode.setCurrentIndex(1)
    qtbot.waitUntil(lambda: not view.job.running and view.result is not None
                    and view.result[0].source.startswith("autocorrelation"), timeout=60000)
    expected = TS.autocorrelation_timescales(session.clean_trace["layers.0.c"], session.clean_trace.offsets)
    np.testing.assert_allclose(view.result[0].tau, expected, rtol=1e-12, equal_nan=True)


def test_timescales_view_says_why_an_elman_rnn_has_no_decay_spectrum(qtbot, session):
    view = TimescalesView(session)
    qtbot.addWidget(view)
    view.show()
    session.set_model(char_model(nn.RNN))
    session.set_text(TEXT)
    qtbot.waitUntil(lambda: "no decay gate" in view.message(), timeout=20000)


def test_unit_stats_view_plots_each_units_statistics(qtbot, session, tmp_path):
    view = UnitStatsView(session)
    model = char_model(nn.LSTM)
    open_on(qtbot, session, view, model)
    session.select_probe("layers.0.gate_f")
    qtbot.waitUntil(lambda: view.result is not None and view.result.stats.probe == "layers.0.gate_f"
                    and not view.job.running, timeout=20000)
    st = U.unit_stats(session.clean_trace, "layers.0.gate_f")
    got = {}
    for name, item in view.points.items():
        xs, ys = item.getData()
        got.update(dict(zip(xs.astype(int).tolist(), ys.tolist())))
    assert sorted(got) == list(range(8))
    np.testing.assert_allclose([got[u] for u in range(8)], st.mean, rtol=1e-12)
    assert len(view.result.gates) == 4 and view.result.profile.probe == "layers.0.h"
    view.export_csv(tmp_path / "u.csv")
    rows = list(csv.reader(open(tmp_path / "u.csv")))
    assert rows[0][:4] == ["probe", "unit", "mean", "std"] and len(rows) == 9
    assert float(rows[1][2]) == pytest.approx(st.mean[0], rel=1e-8)
    assert export_view(view, tmp_path / "u.svg").stat().st_size > 0
