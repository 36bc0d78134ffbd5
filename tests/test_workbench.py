"""The workbench driven as a user would, offscreen (pytest-qt): open a model, type, click the
heatmap, steer, export, survive a corrupt file; newest-wins runs off the GUI thread; no leaks."""
import csv
import json
import string
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import engine  # noqa: E402
from engine import Intervention, Span  # noqa: E402

CHARS = list(string.printable)
TEXT = 'def greet(name):\n    msg = "hello, " + name\n    return (msg, len(msg))\n' * 4
WAIT = 20000


@pytest.fixture
def char_model_file(tmp_path):
    """A char-LSTM saved the way people save one: a state dict with its vocabulary."""
    torch.manual_seed(0)
    emb, rnn, head = nn.Embedding(len(CHARS), 12), nn.LSTM(12, 32, 2), nn.Linear(32, len(CHARS))
    state = {f"embedding.{k}": v for k, v in emb.state_dict().items()}
    state.update({f"lstm.{k}": v for k, v in rnn.state_dict().items()})
    state.update({f"fc.{k}": v for k, v in head.state_dict().items()})
    path = tmp_path / "char_lstm.pt"
    torch.save({"state_dict": state, "chars": CHARS}, path)
    return path


def open_with_text(qtbot, window, path, text=TEXT):
    s = window.session
    s.text = text
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        window.open_model(path)
    assert s.trace.text(0) == text
    return s


def test_open_type_and_see_the_trace(qtbot, window, char_model_file):
    s = open_with_text(qtbot, window, char_model_file)
    # no look_at.json beside it: the first layer's hidden state, on the unit that varies most
    assert s.model.architecture == "lstm" and s.probe == "layers.0.h"
    h = s.trace["layers.0.h"]
    assert s.units == [int(np.argmax(h.var(axis=0)))] and h[:, s.units[0]].std() > 0
    assert window.views["Probes"].tree.topLevelItemCount() == 3  # inputs/outputs, layer 0, layer 1
    editor = window.views["Input"].editor
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        editor.setPlainText("x = [1, 2]\n")
    assert s.trace.text(0) == "x = [1, 2]\n"
    ref = engine.run(engine.load(char_model_file, device="cpu"), "x = [1, 2]\n")
    np.testing.assert_array_equal(s.trace["layers.1.c"], ref["layers.1.c"])
    heat = window.views["Neuron heatmap"]
    assert heat.image.image.shape == (32, len("x = [1, 2]\n"))  # units x tokens
    assert window.views["Text"].shown_text() == "x = [1, 2]\n"


def test_clicking_the_heatmap_selects_a_unit_and_step_everywhere(qtbot, window, char_model_file):
    s = open_with_text(qtbot, window, char_model_file)
    heat = window.views["Neuron heatmap"]
    heat.plot_item.vb.setRange(xRange=(0, 40), yRange=(0, 32), padding=0)
    QApplication.processEvents()
    scene_pt = heat.plot_item.vb.mapViewToScene(QPointF(17.5, 9.5))
    widget_pt = heat.plot.mapFromScene(scene_pt)
    with qtbot.waitSignal(s.selection_changed, timeout=WAIT):
        QTest.mouseClick(heat.plot.viewport(), Qt.LeftButton, pos=widget_pt)
    assert s.units[0] == 9 and s.step == 17
    plot = window.views["Unit traces"]
    np.testing.assert_array_equal(plot.steered[0].yData, s.trace[s.probe][:, 9])
    assert plot.cursor.value() == 17
    assert heat.unit_line.value() == 9.5


def test_steering_changes_outputs_after_the_edit_and_nothing_before(qtbot, window, char_model_file):
    s = open_with_text(qtbot, window, char_model_file)
    s.select_probe("layers.0.c")
    s.select_unit(4)
    s.set_step(30)
    panel = window.views["Interventions"]
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        panel.add_selection.click()
    assert s.interventions == [Intervention("layers.0.c", "set", 0.0, Span(30), [4])]
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        panel.value.setValue(3.0)  # the editor edits the selected intervention live
    assert s.interventions[0].value == 3.0
    clean, steered = s.clean_trace, s.trace
    for name in clean.probes:
        np.testing.assert_array_equal(steered[name][:30], clean[name][:30], err_msg=name)
    assert np.all(steered["layers.0.c"][30:, 4] == 3.0)
    assert np.abs(steered["logits"][30:] - clean["logits"][30:]).max() > 1e-3
    if "Outputs" in window.views:  # the before/after prediction table follows the edit
        s.set_step(35)
        QApplication.processEvents()


def test_unit_trace_axes_hold_still_while_steering_and_grow_to_show_every_value(qtbot, window, char_model_file):
    s = open_with_text(qtbot, window, char_model_file)
    s.select_probe("layers.0.c")
    s.select_unit(4)
    plot = window.views["Unit traces"]

    def y_range():
        QApplication.processEvents()
        return plot.plot_item.vb.viewRange()[1]

    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.add_intervention(Intervention("layers.0.c", "set", 0.0, Span(30), [4]))
    low, high = y_range()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.replace_intervention(0, Intervention("layers.0.c", "set", 0.01, Span(30), [4]))
    assert y_range() == [low, high]  # inside the range: the axes stay where they were
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.replace_intervention(0, Intervention("layers.0.c", "set", high + 5.0, Span(30), [4]))
    assert y_range()[1] >= high + 5.0  # a value outside: the range grows to show it
    np.testing.assert_array_equal(plot.steered[0].yData, s.trace["layers.0.c"][:, 4])
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.replace_intervention(0, Intervention("layers.0.c", "set", 0.0, Span(30), [4]))
    assert y_range()[1] >= high + 5.0  # and does not shrink back while steering
    s.select_unit(5)  # other curves: fitted afresh
    assert y_range()[1] < high + 5.0


def test_exports_png_svg_hdf5_csv_read_back(qtbot, window, char_model_file, tmp_path):
    s = open_with_text(qtbot, window, char_model_file)
    s.select_probe("layers.1.c")
    s.select_units([0])
    s.add_intervention(Intervention("layers.1.h", "scale", 0.5, units=[1]))
    qtbot.waitSignal(s.trace_changed, timeout=WAIT).wait()
    png, svg = tmp_path / "heat.png", tmp_path / "traces.svg"
    window.export_view("Neuron heatmap", png)
    img = QImage(str(png))
    assert not img.isNull() and img.width() > 100
    window.export_view("Unit traces", svg)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and len(list(root.iter())) > 10
    h5 = tmp_path / "trace.h5"
    with qtbot.waitSignal(s.runner.finished, timeout=WAIT):
        window.export_trace(h5)
    back = engine.load_trace(h5)
    assert back.probes == s.trace.probes and back.interventions == tuple(s.interventions)
    np.testing.assert_array_equal(back["layers.1.c"], s.trace["layers.1.c"])
    from workbench.export import export_units_csv

    out = export_units_csv(s, tmp_path / "units.csv")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["token", "sequence", "text", "layers.1.c[0]", "layers.1.c[0] clean"]
    assert len(rows) == s.trace.n_tokens + 1 and rows[1 + 2][2] == TEXT[2]
    np.testing.assert_allclose([float(r[3]) for r in rows[1:]], s.trace["layers.1.c"][:, 0], rtol=1e-6)


def test_svg_export_survives_closed_paths(qtbot, tmp_path):
    """pyqtgraph 0.14 + Qt 6.12 write closed paths ending in Z, which its SVG exporter chokes on."""
    import pyqtgraph as pg

    from workbench.export import export_view

    widget = pg.PlotWidget()
    qtbot.addWidget(widget)
    widget.plot([0, 1, 2, 3], [0, 1, 0, 1], fillLevel=0, brush=(50, 50, 200, 100))  # a filled, closed path
    widget.plot_item = widget.getPlotItem()
    out = export_view(widget, tmp_path / "filled.svg")
    root = ET.parse(out).getroot()
    paths = [e.get("d") for e in root.iter() if e.tag.endswith("path") and e.get("d")]
    assert paths and not any("Z" in d for d in paths)


def test_a_corrupt_model_shows_an_error_and_keeps_the_current_one(qtbot, window, char_model_file, tmp_path):
    s = open_with_text(qtbot, window, char_model_file)
    model_before = s.model
    bad = tmp_path / "broken.pt"
    bad.write_bytes(char_model_file.read_bytes()[:500])
    with qtbot.waitSignal(s.error, timeout=WAIT):
        window.open_model(bad)
    assert "Could not open the model" in window.last_error and "broken.pt" in window.last_error
    assert window.error_dialog.isVisible()
    assert s.model is model_before
    window.error_dialog.accept()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):  # still usable
        s.set_text("y = 1\n")
    assert s.trace.text(0) == "y = 1\n"


def test_a_burst_of_edits_yields_one_final_trace_and_no_run_on_the_gui_thread(qtbot, window, char_model_file,
                                                                              monkeypatch):
    s = open_with_text(qtbot, window, char_model_file)
    threads = []
    real_run = engine.run

    def spy(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine, "run", spy)
    received = []
    s.trace_changed.connect(lambda: received.append(s.trace))
    for k in range(20):
        s.set_text(TEXT + "#" * (k + 1))
    qtbot.waitUntil(lambda: not s.runner.is_busy(), timeout=WAIT)
    QApplication.processEvents()
    assert len(received) == 1
    assert received[0].text(0) == TEXT + "#" * 20
    assert threads and not any(threads)
    assert not s.runner.gui_thread_ran_job


def test_project_round_trip(qtbot, window, char_model_file, tmp_path):
    s = open_with_text(qtbot, window, char_model_file)
    s.select_probe("layers.0.gate_f")
    s.select_unit(5)
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.add_intervention(Intervention("layers.0.c", "zero", positions=[3], units=[1]))
    project = tmp_path / "p.seqscope.json"
    window.save_project(project)
    from workbench.main_window import MainWindow

    other = MainWindow(settings=QSettings(str(tmp_path / "s2.ini"), QSettings.IniFormat))
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.session.trace_changed, timeout=WAIT):
        other.open_project(project)
    o = other.session
    assert o.probe == "layers.0.gate_f" and o.units[0] == 5 and o.interventions == s.interventions
    assert o.text == s.text
    np.testing.assert_array_equal(o.trace["layers.0.c"], s.trace["layers.0.c"])
    other.close()


def test_closing_the_window_stops_the_worker_and_leaks_no_windows(qtbot, char_model_file, tmp_path):
    from workbench.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    w.show()
    open_with_text(qtbot, w, char_model_file)
    thread = w.session.runner._thread
    w.close()
    w.deleteLater()
    qtbot.waitUntil(lambda: not thread.isRunning(), timeout=WAIT)
    QApplication.processEvents()
    QApplication.sendPostedEvents(None, 0)
    leftovers = [x for x in QApplication.topLevelWidgets() if isinstance(x, MainWindow) and x.isVisible()]
    assert not leftovers


def test_attention_view_shows_the_cell_path_around_the_cursor(qtbot, window, char_model_file):
    from engine.analysis.cell_attention import cell_attention

    s = open_with_text(qtbot, window, char_model_file)
    view = window.views["Attention"]
    window.docks["Attention"].raise_()
    s.select_probe("layers.0.c")
    s.set_step(100)
    view.size.setValue(64)
    view.flush()
    QApplication.processEvents()
    assert view.window_rows == (68, 132)
    expected = cell_attention(s.trace["layers.0.gate_i"], s.trace["layers.0.gate_f"], (68, 132), (68, 132))
    np.testing.assert_allclose(view.values, expected)
    assert view.query_line.value() == 100.5
    assert "cell path" in view.caption.text()


def test_attention_view_weights_mamba_attention_by_what_reaches_the_output(qtbot, window):
    """On the bundled Mamba: the recorded attn probe by default, and on request the output-weighted
    map, computed from the trace as engine.analysis computes it."""
    from engine.analysis.implicit_attention import contribution_attention
    from workbench.examples import examples

    ex = next(e for e in examples() if e.name == "selective-ssm-recall")
    s = window.session
    s.text = ex.sample.read_text()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        window.open_model(ex.model)
    view = window.views["Attention"]
    assert s.look_at.view == "Attention" and view.weighted.isChecked()  # as its look_at.json asks
    view.weighted.setChecked(False)
    window.docks["Attention"].raise_()
    s.select_probe("layers.1.out")
    s.set_step(40)
    view.size.setValue(32)
    view.flush()
    QApplication.processEvents()
    assert view.weighted.isVisible() and not view.one_unit.isVisible()
    rows = view.window_rows
    plain = view.values.copy()
    np.testing.assert_allclose(plain, s.trace["layers.1.attn"][rows[0]:rows[1], rows[0]:rows[1]])
    view.weighted.setChecked(True)
    QApplication.processEvents()
    expected = contribution_attention(s.trace, s.model, 1, rows, rows, sequence=0)
    np.testing.assert_allclose(view.values, expected)
    assert not np.allclose(plain / plain.max(), expected / expected.max())
    assert "reaches the output" in view.caption.text()


def test_a_long_input_records_only_what_is_shown_and_stays_cancellable(qtbot, window, char_model_file):
    s = open_with_text(qtbot, window, char_model_file)
    s.capture_budget_bytes = 2 * 2**20  # as if the input were ~100k tokens on a big model
    long_text = TEXT * 200  # ~14k characters
    with qtbot.waitSignal(s.trace_changed, timeout=60000):
        s.set_text(long_text)
    assert s.trace.n_tokens == len(long_text)
    assert "layers.1.c" in s.trace.arrays and "layers.0.gate_f" not in s.trace.arrays
    with qtbot.waitSignal(s.trace_changed, timeout=60000):
        s.select_probe("layers.0.gate_f")  # recorded on demand
    assert "layers.0.gate_f" in s.trace.arrays
    # a run can be cancelled: the worker drops it, the last trace stays
    before = s.trace
    s.set_text(long_text + "x")
    s.runner.cancel()
    qtbot.waitUntil(lambda: not s.runner.is_busy(), timeout=60000)
    assert s.trace is before


def test_drag_and_drop_opens_a_model_and_it_is_remembered(qtbot, window, char_model_file):
    from PySide6.QtCore import QMimeData, QPoint, QUrl
    from PySide6.QtGui import QDropEvent

    s = window.session
    s.text = TEXT
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(char_model_file))])
    drop = QDropEvent(QPoint(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        window.dropEvent(drop)
    assert s.model_path == str(char_model_file)
    assert window.settings.value("recent_models") in ([str(char_model_file)], str(char_model_file))
    assert [a.text() for a in window.recent_menu.actions()] == [str(char_model_file)]


def test_open_example_menu_opens_each_bundled_model_on_its_sample(qtbot, window):
    """File ▸ Open example lists the bundled models; picking one opens it on its sample, even
    right after a model that reads another kind of input (numbers, then text)."""
    from workbench.examples import MODELS, examples

    menu = next(a.menu() for a in window.menuBar().actions()[0].menu().actions() if a.text() == "Open example")
    names = [a.text() for a in menu.actions()]
    assert names[0] == "char-lstm-python"
    assert sorted(names) == sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    s = window.session
    by_name = {a.text(): a for a in menu.actions()}
    for name in ("lstm-timeseries", "gru-dyck"):
        ex = next(e for e in examples() if e.name == name)
        with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
            by_name[name].trigger()
        qtbot.waitUntil(lambda: s.model_path == str(ex.model) and not s.runner.is_busy(), timeout=WAIT)
        assert s.trace is not None and s.trace.n_tokens > 10
        if name == "gru-dyck":
            assert s.trace.text(0) == ex.sample.read_text()
        else:
            assert not s.model.takes_tokens


def test_open_model_leaving_out_unused_tensors(qtbot, window, tmp_path, monkeypatch):
    """A file with a tensor the model does not use is refused by File ▸ Open model and loads by
    File ▸ Open model, leaving out unused tensors (engine.load strict=False), with the note."""
    from PySide6.QtWidgets import QFileDialog

    from model_files import gru_with_an_unused_tensor

    path = tmp_path / "extra.pt"
    rnn, emb, head = gru_with_an_unused_tensor(path)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(path), "")))
    actions = {a.text(): a for a in window.menuBar().actions()[0].menu().actions()}
    s = window.session
    with qtbot.waitSignal(s.error, timeout=WAIT):
        actions["Open model…"].trigger()
    assert "--no-strict" in window.last_error and s.model is None
    window.error_dialog.accept()
    with qtbot.waitSignal(s.model_changed, timeout=WAIT):
        actions["Open model, leaving out unused tensors…"].trigger()
    assert "extra.scale" in s.model.load_info["notes"]


def test_open_model_with_a_config(qtbot, window, tmp_path, monkeypatch):
    """A file whose names no rule recognises is refused by File ▸ Open model; File ▸ Open model
    with a config… (the model, then its JSON config) loads it, equal to the torch modules; a
    config file that is not an object is refused in words and the model stays."""
    import json

    from PySide6.QtWidgets import QFileDialog

    from model_files import lstm_with_custom_names

    path = tmp_path / "custom.pt"
    (rnn, emb, head), config = lstm_with_custom_names(path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "list.json").write_text("[1, 2]")
    answers = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (answers.pop(0), "")))
    actions = {a.text(): a for a in window.menuBar().actions()[0].menu().actions()}
    s = window.session
    answers[:] = [str(path), str(tmp_path / "config.json")]
    with qtbot.waitSignal(s.model_changed, timeout=WAIT):
        actions["Open model with a config…"].trigger()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_values(np.array([1, 5, 2, 8]))
    with torch.no_grad():
        want = head(rnn(emb(torch.tensor([1, 5, 2, 8]))[:, None])[0][:, 0]).numpy()
    np.testing.assert_allclose(np.asarray(s.trace["logits"]).reshape(4, 9), want, atol=1e-5)
    model = s.model
    answers[:] = [str(path), str(tmp_path / "list.json")]
    actions["Open model with a config…"].trigger()
    assert "holds a JSON list" in window.last_error and s.model is model


def test_a_project_reopens_a_model_the_way_it_was_loaded(qtbot, window, tmp_path):
    """A model opened with a config (and strict=False) is saved in the project with both, and the
    project reopens it; without them the file would be refused."""
    from model_files import lstm_with_custom_names

    path = tmp_path / "custom.pt"
    _, config = lstm_with_custom_names(path)
    s = window.session
    with qtbot.waitSignal(s.model_changed, timeout=WAIT):
        s.open_model(path, config=config, strict=False)
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_values(np.array([3, 1, 4]))
    before = np.asarray(s.trace["logits"])
    s.save_project(tmp_path / "p.seqscope.json")
    data = json.loads((tmp_path / "p.seqscope.json").read_text())
    assert data["model_config"] == config and data["model_strict"] is False
    with qtbot.waitSignal(s.model_changed, timeout=WAIT):
        s.open_model(Path(__file__).resolve().parents[1] / "assets" / "models" / "gru-dyck")
    errors = []
    s.error.connect(errors.append)
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        assert s.open_project(tmp_path / "p.seqscope.json")
        qtbot.waitUntil(lambda: errors or s.model.config.cell == "lstm", timeout=WAIT)
        assert not errors, errors
    assert s.model.config.cell == "lstm" and s.model_load == {"config": config, "strict": False}
    np.testing.assert_array_equal(np.asarray(s.trace["logits"]), before)
