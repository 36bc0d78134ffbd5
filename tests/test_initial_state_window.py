"""The window's Run ▸ Start from a trace's final state… / Continue from this run's final state /
Start from zeros, offscreen: each trace the window shows against ``engine.run`` with the same
initial state (exact: the same model object, input and arrays); refusals keep everything."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytestqt")
from PySide6.QtWidgets import QFileDialog  # noqa: E402

import engine  # noqa: E402
from test_workbench import open_with_text  # noqa: E402  (tests/ is on the path, as for corpus_helpers)

CHARS = "abcdefgh \n.()"
TEXT = "abc(de)fg.h\nab"
WAIT = 20000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def char_model_file(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.ModuleDict({"embedding": torch.nn.Embedding(len(CHARS), 5), "lstm": torch.nn.LSTM(5, 12, 2),
                               "fc": torch.nn.Linear(12, len(CHARS))})
    path = tmp_path / "char_lstm.pt"
    torch.save({"state_dict": net.state_dict(), "vocab": CHARS}, path)
    return path


def assert_shows(s, want):
    assert s.trace.text(0) == want.text(0)
    for name in want.probes:
        np.testing.assert_array_equal(s.trace[name], want[name], err_msg=name)


def trigger(qtbot, s, action):
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        action.trigger()


def test_continue_from_this_run_then_start_from_zeros(qtbot, window, char_model_file):
    s = open_with_text(qtbot, window, char_model_file, TEXT)
    continue_action = window.start_actions[1]
    assert continue_action.isEnabled() and not window.zeros_action.isEnabled()
    first = s.trace
    trigger(qtbot, s, continue_action)
    assert_shows(s, engine.run(s.model, TEXT, initial_state=engine.final_state(first)))
    assert window.model_label.text().endswith(" · from the final state of the previous run (14 tokens)")
    assert window.zeros_action.isEnabled()
    second = s.trace  # continuing again chains: from the end of the run that itself continued
    trigger(qtbot, s, continue_action)
    assert_shows(s, engine.run(s.model, TEXT, initial_state=second))
    state = engine.final_state(second)
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):  # later runs (another text) start there too
        window.views["Input"].editor.setPlainText("hg.ba")
    assert_shows(s, engine.run(s.model, "hg.ba", initial_state=state))
    assert s.trace.initial_state["layers.1.c"].any()
    trigger(qtbot, s, window.zeros_action)
    assert_shows(s, engine.run(s.model, "hg.ba"))
    assert not s.trace.initial_state and " · from " not in window.model_label.text()
    assert not window.zeros_action.isEnabled()


def test_start_from_a_trace_file_and_refuse_one_that_does_not_fit(qtbot, window, char_model_file, tmp_path,
                                                                  monkeypatch):
    s = open_with_text(qtbot, window, char_model_file, TEXT)
    model = s.model
    engine.save_trace(engine.run(model, "fedcba"), tmp_path / "enc.h5")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "enc.h5"), ""))
    trigger(qtbot, s, window.start_actions[0])
    assert_shows(s, engine.run(model, TEXT, initial_state=engine.run(model, "fedcba")))
    assert window.model_label.text().endswith(" · from the final state of enc.h5")
    shown = s.trace
    # a state of another width: the usual error dialog, one sentence; the model and its state stay
    np.savez(tmp_path / "wide.npz", **{"layers.0.h": np.zeros(7), "layers.0.c": np.zeros(7)})
    window.start_from_file(tmp_path / "wide.npz")
    assert window.last_error.startswith("Could not start from that state: ")
    assert "wide.npz does not fit this model: " in window.last_error
    assert "it should be [12]" in window.last_error and "\n" not in window.last_error
    assert window.error_dialog.isVisible()
    assert s.model is model and s.trace is shown and s.initial_state_source == "the final state of enc.h5"


def test_families_without_an_initial_state_disable_the_actions(qtbot, window):
    from stateless_model import stateless_model

    s = window.session
    s.set_model(stateless_model())
    for action in window.start_actions:
        assert not action.isEnabled()
        assert "always starts from its zero state: initial states are for the classic LSTM/GRU/RNN" in action.toolTip()
    assert s.initial_state is None


def test_a_mamba_run_continues_from_its_final_state(qtbot, window):
    s = open_with_text(qtbot, window, ROOT / "assets" / "models" / "selective-ssm-recall", text="abcab")
    continue_action = window.start_actions[1]
    assert continue_action.isEnabled()
    first = s.trace
    trigger(qtbot, s, continue_action)
    assert_shows(s, engine.run(s.model, "abcab", initial_state=engine.final_state(first)))
    assert s.trace.initial_state["layers.0.state"].shape == (1, 128, 16)


def test_views_that_run_the_model_again_start_where_the_shown_run_started(char_model_file):
    """A long input's trace records only some probes; the timescales and dynamics views then run
    the model again for theirs, and must start from the shown run's initial state, not zeros."""
    from workbench.views import dynamics, timescales

    model = engine.load(char_model_file, device="cpu")
    state = {name: np.full(width, 0.4, np.float32) for name, width in model.state_widths().items()}
    shown = engine.run(model, TEXT, probes="logits", initial_state=state)
    full = engine.run(model, TEXT, initial_state=state)
    zeros = engine.run(model, TEXT)
    got, want = (timescales.compute(model, t, TEXT, "autocorrelation") for t in (shown, full))
    assert [r.source for r in got] == [r.source for r in want]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.tau, b.tau)
    got, want, other = (dynamics.compute(model, t, TEXT, 1, "mean") for t in (shown, full, zeros))
    np.testing.assert_array_equal(got.coords, want.coords)
    np.testing.assert_array_equal(got.radius, want.radius)
    assert not np.array_equal(got.radius, other.radius)  # the start matters


def test_a_project_keeps_the_state_its_runs_start_from(qtbot, window, char_model_file, tmp_path):
    from PySide6.QtCore import QSettings

    from workbench.main_window import MainWindow

    s = open_with_text(qtbot, window, char_model_file, TEXT)
    trigger(qtbot, s, window.start_actions[1])
    window.save_project(tmp_path / "p.seqscope.json")
    other = MainWindow(settings=QSettings(str(tmp_path / "s2.ini"), QSettings.IniFormat))
    qtbot.addWidget(other)
    other.open_project(tmp_path / "p.seqscope.json")
    o = other.session
    qtbot.waitUntil(lambda: o.trace is not None and bool(o.trace.initial_state), timeout=WAIT)
    assert_shows(o, s.trace)  # float32 states through JSON's decimal floats come back bit for bit
    assert other.model_label.text().endswith(" · from the final state of the previous run (14 tokens)")
    assert other.zeros_action.isEnabled()
    # a project whose state does not fit its model is refused whole
    data = json.loads((tmp_path / "p.seqscope.json").read_text(encoding="utf-8"))
    data["initial_state"]["layers.0.h"] = [0.0] * 5
    (tmp_path / "bad.seqscope.json").write_text(json.dumps(data), encoding="utf-8")
    with qtbot.waitSignal(o.error, timeout=WAIT) as caught:
        other.open_project(tmp_path / "bad.seqscope.json")
    assert "the project's initial state does not fit this model: initial_state['layers.0.h'] has shape [5]" \
        in caught.args[0]
    other.close()
