"""The window as a new user meets it: what it opens each model on (its look_at.json), room for the
analysis views at the default size, readable text colours, legends off the data, class and input
names of a numeric model, "Computing…" while the first run computes, and characters outside the
vocabulary said in the status bar."""
import json

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QRectF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import engine  # noqa: E402
from workbench.examples import LOOK_AT_FILE, MODELS, examples, look_at, parse_look_at  # noqa: E402
from workbench.session import most_varying_unit  # noqa: E402
from workbench.views.colors import DIVERGING, light_text, relative_luminance  # noqa: E402

WAIT = 30000


def _example(name):
    return next(e for e in examples() if e.name == name)


def _open_example(qtbot, window, name):
    ex = _example(name)
    with qtbot.waitSignal(window.session.trace_changed, timeout=WAIT):
        window.open_example(ex)
    qtbot.waitUntil(lambda: not window.session.runner.is_busy(), timeout=WAIT)
    QApplication.processEvents()
    return window.session


@pytest.fixture
def default_window(qtbot, tmp_path):
    """A main window at its default size (the conftest fixture resizes it)."""
    from workbench.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


# -- what a model opens on ---------------------------------------------------------------------------


def test_every_bundled_model_has_a_look_at_entry_that_fits_the_model():
    """Each card's "What to look at" as data: the probe exists, the units are in range."""
    folders = sorted(p for p in MODELS.iterdir() if p.is_dir())
    assert len(folders) == 4
    for folder in folders:
        ex = _example(folder.name)
        entry = look_at(ex.model)
        assert entry is not None, f"{folder.name} has no readable {LOOK_AT_FILE}"
        model = engine.load(ex.model, device="cpu")
        specs = {s.name: s for s in model.probe_specs()}
        assert entry.probe in specs, f"{folder.name}: no probe {entry.probe}"
        assert all(u < specs[entry.probe].width for u in entry.units)
        assert entry.why and (entry.view is None or entry.view in
                              ("Text", "Unit traces", "Attention", "Gates", "Neuron heatmap"))
    assert look_at(MODELS / "char-lstm-python" / "model.safetensors").units == (121,)


def test_a_look_at_entry_is_checked():
    assert parse_look_at({"probe": "layers.0.h", "unit": 3}).units == (3,)
    for bad in ([], {"unit": 3}, {"probe": ""}, {"probe": "x", "units": [-1]}, {"probe": "x", "units": "3"},
                {"probe": "x", "step": 1.5}, {"probe": "x", "units": [True]}, {"probe": "x", "view": 3}):
        with pytest.raises(ValueError):
            parse_look_at(bad)


def test_an_unreadable_look_at_file_is_no_look_at(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    assert look_at(tmp_path / "model.pt") is None
    (tmp_path / LOOK_AT_FILE).write_text("[" * 100_000)
    assert look_at(tmp_path / "model.pt") is None
    (tmp_path / LOOK_AT_FILE).write_text(json.dumps({"probe": "layers.0.c", "units": [2]}))
    assert look_at(tmp_path / "model.pt").probe == "layers.0.c"
    assert look_at(tmp_path).units == (2,)  # a folder model


def test_the_most_varying_unit_is_never_a_constant_one():
    rng = np.random.default_rng(0)
    a = np.zeros((50, 4))
    a[:, 0] = 7.0  # constant, and the largest in value
    a[:, 1] = rng.normal(0, 0.1, 50)
    a[:, 2] = rng.normal(0, 1.0, 50)
    a[3, 2] = np.nan  # a non-finite value is left out, not propagated
    a[:, 3] = np.inf
    assert most_varying_unit(a) == 2
    assert most_varying_unit(np.ones((5, 3))) == 0  # all constant: nothing better to pick


def test_the_default_window_opens_on_the_string_unit_of_the_char_lstm(qtbot, default_window):
    s = _open_example(qtbot, default_window, "char-lstm-python")
    assert (s.probe, s.units, s.step) == ("layers.0.h", [121], 120)
    text = default_window.views["Text"]
    assert text.caption.text().startswith("layers.0.h unit 121")
    # not a wall of one colour: the unit takes both signs over the sample
    values = s.trace["layers.0.h"][:, 121]
    assert values.min() < -0.5 and values.max() > 0.5


def test_each_example_opens_on_its_card_unit_and_view(qtbot, default_window):
    w = default_window
    s = _open_example(qtbot, w, "gru-dyck")
    assert (s.probe, s.units) == ("layers.0.h", [5])
    s = _open_example(qtbot, w, "selective-ssm-recall")
    assert s.probe == "layers.1.out" and s.step == 9 and s.trace.token_text[8] == "?"
    assert w.views["Attention"].weighted.isChecked()
    assert not w.views["Attention"].visibleRegion().isEmpty()  # its tab is raised
    out = s.trace["layers.1.out"]
    assert s.units[0] == int(np.argmax(out.var(axis=0)))  # no unit in the entry: the most varying one
    s = _open_example(qtbot, w, "lstm-timeseries")
    assert (s.probe, s.units) == ("layers.0.c", [18])


def test_a_probe_and_unit_chosen_before_the_model_opens_win(qtbot, default_window):
    """What ``seqscope --probe layers.1.c --unit 7`` does: set them, then open the model."""
    s = default_window.session
    s.probe, s.units = "layers.1.c", [7]
    s = _open_example(qtbot, default_window, "char-lstm-python")
    assert (s.probe, s.units) == ("layers.1.c", [7])
    # the next model opened is shown as its own card says
    s = _open_example(qtbot, default_window, "gru-dyck")
    assert (s.probe, s.units[0]) == ("layers.0.h", 5)


# -- room for the analysis views ---------------------------------------------------------------------


def _inside(inner: QRectF, outer: QRectF) -> bool:
    return outer.adjusted(-1, -1, 1, 1).contains(inner)


def test_gates_and_attention_are_readable_at_the_default_size(qtbot, default_window, tmp_path):
    w = default_window
    assert (w.width(), w.height()) == (1500, 950)
    s = _open_example(qtbot, w, "char-lstm-python")
    w.docks["Attention"].raise_()
    QApplication.processEvents()
    att = w.views["Attention"]
    att.flush()
    QApplication.processEvents()
    rows = att.window_rows[1] - att.window_rows[0]
    assert rows == 128
    vb = att.plot_item.vb.sceneBoundingRect()
    assert vb.height() / rows >= 3.0, f"the attention map has {vb.height():.0f} px for {rows} rows"
    w.docks["Gates"].raise_()
    QApplication.processEvents()
    gates = w.views["Gates"]
    gates.flush()
    QApplication.processEvents()
    assert gates.height() >= 450 and gates.data
    shown = QRectF(gates.graphics.viewport().rect())
    for plot in (gates.hist_plot, gates.sat_plot):
        # the whole plot, its axes and labels included, lies inside the view: nothing clipped
        assert _inside(plot.sceneBoundingRect(), shown), (plot.sceneBoundingRect(), shown)
    assert gates.sat_plot.vb.sceneBoundingRect().height() >= 200
    assert w.views["Gates"].grab().save(str(tmp_path / "gates.png"))
    assert s.trace is not None


def test_every_tab_title_is_shown_whole_at_the_default_size(qtbot, default_window):
    """Eleven views once shared one tab bar and read "At…", "S…": no title is cut, and no tab bar
    needs its scroll buttons at 1500×950."""
    from PySide6.QtWidgets import QTabBar

    w = default_window
    _open_example(qtbot, w, "char-lstm-python")
    QApplication.processEvents()
    bars = [b for b in w.findChildren(QTabBar) if b.isVisible() and b.count() > 1]
    titles = sorted(b.tabText(i) for b in bars for i in range(b.count()))
    assert set(titles) >= {"Attention", "Linear probe", "Neuron search", "Compare", "Outputs"}, titles
    assert len(titles) == len(set(titles)), f"a tab shown in two bars (a bar Qt left behind): {titles}"
    for bar in bars:
        need = sum(bar.tabSizeHint(i).width() for i in range(bar.count()))
        assert need <= bar.width(), f"{[bar.tabText(i) for i in range(bar.count())]} need {need} px of {bar.width()}"
        assert bar.elideMode() == Qt.ElideNone


def test_reset_layout_brings_every_dock_back_to_its_place(qtbot, default_window):
    from workbench.main_window import LOWER_TABS, UPPER_TABS

    w = default_window
    _open_example(qtbot, w, "char-lstm-python")
    w.docks["Compare"].setFloating(True)
    w.docks["Attention"].close()
    w.splitDockWidget(w.docks["Text"], w.docks["Gates"], Qt.Horizontal)  # Gates out of its tab group
    QApplication.processEvents()
    assert set(map(id, w.tabifiedDockWidgets(w.docks["Attention"]))) != set(
        id(w.docks[t]) for t in UPPER_TABS if t != "Attention")
    w.reset_layout()
    qtbot.wait(200)
    for group in (UPPER_TABS, LOWER_TABS):
        first = w.docks[group[0]]
        assert {d.windowTitle() for d in w.tabifiedDockWidgets(first)} == set(group[1:])
    assert all(d.isVisible() or w.tabifiedDockWidgets(d) for d in w.docks.values())
    assert not w.docks["Compare"].isFloating() and not w.docks["Attention"].isHidden()
    from PySide6.QtWidgets import QTabBar

    shown = [b.tabText(i) for b in w.findChildren(QTabBar) if b.parent() is w and b.isVisible() and b.count() > 1
             for i in range(b.count())]
    assert sorted(shown) == sorted(UPPER_TABS + LOWER_TABS)  # no bar left behind by the old layout


def test_a_running_analysis_does_not_widen_its_column(qtbot, default_window):
    """The progress bar and Cancel of a view's job once sat among its controls: showing them
    widened the right column by 100 px for good, squeezing the text view."""
    w = default_window
    _open_example(qtbot, w, "char-lstm-python")
    w.docks["Linear probe"].raise_()
    qtbot.wait(100)
    view, text = w.views["Linear probe"], w.docks["Text"]
    before = (w.docks["Linear probe"].width(), text.width())
    view.regex.setText('"[^"]*"')
    with qtbot.waitSignal(view.task.done, timeout=30000):
        view.fit()
        assert view.task.widget.isVisible()
    qtbot.wait(100)
    assert (w.docks["Linear probe"].width(), text.width()) == before


# -- colours, legends, names --------------------------------------------------------------------------


def test_text_colour_follows_the_background_luminance():
    dark_red, dark_blue = np.array([103, 0, 31]), np.array([5, 48, 97])
    assert light_text(dark_red) and light_text(dark_blue)
    assert not light_text(np.array([247, 247, 247])) and not light_text(np.array([244, 165, 130]))
    assert relative_luminance(np.array([255, 255, 255])) == pytest.approx(1.0)
    ends = DIVERGING.map(np.array([0.0, 1.0]), mode="byte")[:, :3]
    assert light_text(ends).all()  # both ends of the colour map take white text


def test_the_text_view_draws_white_text_on_dark_cells(qtbot, default_window):
    s = _open_example(qtbot, default_window, "char-lstm-python")
    view = default_window.views["Text"]
    view.flush()
    QApplication.processEvents()
    canvas = view.canvas
    light = np.flatnonzero(canvas.light & np.array([t.strip() != "" for t in canvas.tokens]))
    dark = np.flatnonzero(~canvas.light & np.array([t.strip() != "" for t in canvas.tokens]))
    assert len(light) and len(dark)
    image = canvas.grab().toImage()

    def pixels(i):
        x, y = int(canvas.cols[i]) * canvas.cell_w, int(canvas.rows[i]) * canvas.cell_h
        return [QColor(image.pixel(x + dx, y + dy)) for dx in range(canvas.cell_w) for dy in range(canvas.cell_h)
                if x + dx < image.width() and y + dy < image.height()]

    first_row = [i for i in light if canvas.rows[i] == canvas.rows[light[0]] and i != s.step]
    lightest = max(max(c.lightness() for c in pixels(i)) for i in first_row[:5])
    assert lightest > 200, "no light glyph pixels on a dark cell"


def test_legends_sit_off_the_data(qtbot, default_window):
    s = _open_example(qtbot, default_window, "gru-dyck")
    plot = default_window.views["Unit traces"]
    plot.flush()
    QApplication.processEvents()
    assert len(plot.legend.items) == 1
    assert not plot.legend.sceneBoundingRect().intersects(plot.plot_item.vb.sceneBoundingRect())
    default_window.docks["Gates"].raise_()
    QApplication.processEvents()
    gates = default_window.views["Gates"]
    gates.flush()
    QApplication.processEvents()
    assert not gates.hist_legend.sceneBoundingRect().intersects(gates.hist_plot.vb.sceneBoundingRect())
    assert s.model is not None


def test_a_numeric_model_shows_its_class_and_input_names_and_input_series(qtbot, default_window):
    w = default_window
    s = _open_example(qtbot, w, "lstm-timeseries")
    assert s.model.info()["output_names"] == ["wait", "match", "non-match"]
    outputs = w.views["Outputs"]
    labels = {outputs.table.item(r, 1).text() for r in range(outputs.table.rowCount())}
    assert labels == {"wait", "match", "non-match"}
    plot = w.views["Unit traces"]
    plot.flush()
    assert plot.input_plot.isVisible()
    names = [name for name, _ in plot.input_series()]
    assert names == ["stimulus", "sample_cue", "test_cue"]
    np.testing.assert_array_equal(plot.input_curves[1].yData, s.trace.inputs[:, 1])
    assert not w.docks["Text"].isVisible()  # no text to show: the plots take its room
    s = _open_example(qtbot, w, "gru-dyck")
    assert w.docks["Text"].isVisible() and not plot.input_plot.isVisible()


def test_output_names_survive_save_model_and_trace_files(tmp_path):
    from engine.loading import save_model

    model = engine.load(_example("lstm-timeseries").model, device="cpu")
    save_model(model, tmp_path / "m.safetensors")
    again = engine.load(tmp_path / "m.safetensors", device="cpu")
    assert again.info()["input_names"] == ["stimulus", "sample_cue", "test_cue"]
    trace = engine.run(again, np.zeros((4, 3), np.float32), probes=["logits"])
    engine.save_trace(trace, tmp_path / "t.h5")
    assert engine.load_trace(tmp_path / "t.h5").model_info["output_names"] == ["wait", "match", "non-match"]


# -- computing, notes ----------------------------------------------------------------------------------


def test_outputs_say_computing_while_the_first_run_computes(qtbot, default_window):
    w = default_window
    s = w.session
    model = engine.load(_example("char-lstm-python").model, device="cpu")
    s.text = "x = 1\n" * 50
    s.set_model(model, None)  # submits the run; its result can arrive only through the event loop
    assert s.trace is None and s.computing
    outputs = w.views["Outputs"]
    assert outputs.message() == "Computing…"
    s._on_progress(0, "run", 2, 5)
    assert outputs.message() == "Computing… 40 %"
    assert w.views["Neuron heatmap"].readout.text() == "Computing… 40 %"
    assert w.views["Text"].caption.text() == "Computing… 40 %"
    qtbot.waitUntil(lambda: s.trace is not None, timeout=WAIT)
    assert not s.computing and outputs.message() == ""


def test_the_status_bar_says_which_characters_are_not_in_the_vocabulary(qtbot, default_window):
    s = _open_example(qtbot, default_window, "char-lstm-python")
    assert default_window.notes_label.text() == ""
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_text("naïve = 'café'\n")
    label = default_window.notes_label.text()
    assert label.startswith("2 characters are not in the model's vocabulary (e.g. 'ï', 'é')"), label
    assert s.trace.notes and "unknown token" in label
