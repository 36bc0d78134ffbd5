"""The window keeps the user's work when a file is bad: a bad project or interventions file
changes nothing and says why in one sentence through Session.error; an unexpected error shows a
sentence naming the log file, never a traceback, and the log file gets the traceback."""
import json

import numpy as np
import pytest

pytest.importorskip("pytestqt")

import engine  # noqa: E402
from engine import Intervention  # noqa: E402
from test_workbench import TEXT, WAIT, char_model_file, open_with_text  # noqa: E402,F401
from workbench import log  # noqa: E402


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setenv("SEQSCOPE_LOG_DIR", str(folder))
    return folder


def no_traceback(message: str):
    assert "Traceback" not in message and 'File "' not in message and "\n" not in message, message


def bad_projects(tmp_path, model_path):
    good = {"format": "seqscope-project", "version": 1, "model": str(model_path), "text": "x = 1\n",
            "values": None, "interventions": [], "probe": "layers.0.h", "units": [2], "step": 0, "pinned": []}
    iv = {"probe": "layers.0.c", "op": "zero", "value": None, "positions": [3], "units": [1]}
    cases = {
        "bogus-op": (dict(good, interventions=[dict(iv, op="bogus")]), "intervention 1: unknown op 'bogus'"),
        "units-5.5": (dict(good, interventions=[dict(iv, units=5.5)]), "intervention 1: units must be"),
        "interventions-5": (dict(good, interventions=5), "its interventions should be a list, found 5"),
        "pinned-5": (dict(good, pinned=5), "its pinned units should be"),
        "position-1e999": ('{"format": "seqscope-project", "interventions": [{"probe": "layers.0.c", "op": "zero", '
                           '"positions": [1e999]}]}', "positions must be whole numbers >= 0, got inf"),
        "deep": ('{"format": "seqscope-project", "text": ' + "[" * 100_000, "nested 100001 levels deep"),
        "not-json": ("{nope", "is not valid JSON"),
        "not-a-project": ({"format": "something-else"}, "not a SeqScope project file"),
        "newer": (dict(good, version=7), "saved by a newer SeqScope"),
        "unknown-key": (dict(good, colour="red"), "unknown field \\['colour'\\]"),
        "text-list": (dict(good, text=["a"]), "its text should be text"),
        "values-ragged": (dict(good, text=None, values=[[1, 2], [3]]), "its values should be"),
        "step-negative": (dict(good, step=-1), "its step should be a whole number"),
        "layout": (dict(good, layout="###"), "layout is not valid base64"),
        "model-config-list": (dict(good, model_config=[1]), "its model_config should be a model config"),
        "model-strict-text": (dict(good, model_strict="no"), "its model_strict should be true or false"),
    }
    paths = {}
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.seqscope.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        paths[path] = message
    (tmp_path / "latin1.seqscope.json").write_bytes(b'{"format": "seqscope-project", "text": "caf\xe9"}')
    paths[tmp_path / "latin1.seqscope.json"] = "is not UTF-8 text"
    paths[tmp_path / "missing.seqscope.json"] = "cannot open project file .*: no such file"
    return paths


def test_a_bad_project_changes_nothing_and_says_why(qtbot, window, char_model_file, tmp_path):
    s = open_with_text(qtbot, window, char_model_file)
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.add_intervention(Intervention("layers.0.c", "zero", positions=[3], units=[1]))
    before = (s.model, s.trace, s.clean_trace, list(s.interventions), s.text, s.probe, list(s.units))
    for path, message in bad_projects(tmp_path, char_model_file).items():
        with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
            window.open_project(path)
        sentence = blocker.args[0]
        assert sentence.startswith("Could not open the project: ") and path.name in sentence, sentence
        assert __import__("re").search(message, sentence), (message, sentence)
        no_traceback(sentence)
        assert (s.model, s.trace, s.clean_trace, list(s.interventions), s.text, s.probe, list(s.units)) == before
        assert window.last_error == sentence


def test_a_project_whose_model_or_interventions_do_not_load_changes_nothing(qtbot, window, char_model_file, tmp_path):
    s = open_with_text(qtbot, window, char_model_file)
    before = (s.model, s.trace, list(s.interventions), s.text)
    base = {"format": "seqscope-project", "version": 1, "model": str(char_model_file), "text": "other text",
            "interventions": []}
    for name, data, message in [
        ("no-model", dict(base, model=str(tmp_path / "gone.pt")), "gone.pt"),
        ("no-probe", dict(base, interventions=[{"probe": "layers.7.h", "op": "zero"}]),
         "intervention 1 does not fit its model: names probe 'layers.7.h'"),
        ("no-unit", dict(base, interventions=[{"probe": "layers.0.h", "op": "zero", "units": [32]}]),
         "units \\[32\\] do not exist"),
    ]:
        path = tmp_path / f"{name}.seqscope.json"
        path.write_text(json.dumps(data))
        with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
            window.open_project(path)
        sentence = blocker.args[0]
        assert sentence.startswith(f"Could not open the project {path.name}: "), sentence
        assert __import__("re").search(message, sentence), (message, sentence)
        no_traceback(sentence)
        qtbot.waitUntil(lambda: not s.runner.is_busy(), timeout=WAIT)
        assert (s.model, s.trace, list(s.interventions), s.text) == before


def test_interventions_that_do_not_fit_the_model_are_refused_and_the_old_ones_kept(qtbot, window, char_model_file,
                                                                                     tmp_path):
    s = open_with_text(qtbot, window, char_model_file)
    panel = window.views["Interventions"]
    good = [Intervention("layers.0.h", "add", 0.5, positions=[2])]
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_interventions(good)
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('[{"probe": "layers.0.h", "op": "set", "value": [1, 2, 3]}]')
    no_probe = tmp_path / "no-probe.json"
    no_probe.write_text('{"probe": "layers.0.q", "op": "zero"}')
    from engine.interventions import load_interventions

    for path, message in [(bad_file, "3 numbers but 32 units"), (no_probe, "no probe 'layers.0.q'"),
                          (tmp_path / "missing.json", "cannot open interventions file")]:
        with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
            panel._try(lambda p=path: s.set_interventions(load_interventions(p)))
        assert message in blocker.args[0], blocker.args[0]
        no_traceback(blocker.args[0])
        assert s.interventions == good
    panel.positions.setText("three")  # typed in the editor
    with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
        panel._add()
    assert blocker.args[0].startswith("Intervention not applied: positions and units are numbers"), blocker.args[0]
    assert s.interventions == good


def test_an_unexpected_error_shows_a_sentence_and_logs_the_traceback(qtbot, window, char_model_file, monkeypatch,
                                                                       log_dir):
    s = open_with_text(qtbot, window, char_model_file)
    model_before = s.model

    def broken_load(*args, **kwargs):
        return {}["a key no checkpoint has"]  # a bug in a loader: KeyError with a traceback

    monkeypatch.setattr(engine, "load", broken_load)
    with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
        window.open_model(char_model_file)
    sentence = blocker.args[0]
    logged = log_dir / "seqscope.log"
    assert sentence == (f"Could not open the model: an unexpected error (KeyError: 'a key no checkpoint has'); "
                        f"the details are in {logged}")
    no_traceback(window.error_dialog.text())
    assert s.model is model_before
    text = logged.read_text()
    assert "Traceback (most recent call last)" in text and "broken_load" in text and "KeyError" in text

    # a slot that fails unexpectedly reports the same way instead of raising into Qt
    def broken_export(view, path):
        raise RuntimeError("the exporter fell over")

    monkeypatch.setattr("workbench.main_window.export_view", broken_export)
    with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
        window.export_view("Neuron heatmap", "/tmp/x.png")
    assert blocker.args[0].startswith("Could not export the view: an unexpected error (RuntimeError: the exporter")
    assert "the exporter fell over" in logged.read_text()
    # an engine error is only its sentence, with no log path
    with qtbot.waitSignal(s.error, timeout=WAIT) as blocker:
        window.open_input(log_dir / "no-such-input.npy", numeric=True)
    assert "seqscope.log" not in blocker.args[0]
    no_traceback(blocker.args[0])


def test_the_log_file_is_capped(log_dir):
    for k in range(40):
        assert log.write(f"record {k} " + "x" * 60_000) == log_dir / "seqscope.log"
    sizes = [p.stat().st_size for p in log_dir.iterdir()]
    assert sorted(p.name for p in log_dir.iterdir()) == ["seqscope.log", "seqscope.log.1"]
    assert max(sizes) <= log.MAX_BYTES
    assert "record 39" in (log_dir / "seqscope.log").read_text()


def test_an_unwritable_log_loses_the_details_not_the_sentence(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEQSCOPE_LOG_DIR", str(blocker / "logs"))  # a folder under a file: cannot exist
    assert log.write("x") is None
    message = log.describe_unexpected("test", ValueError("bad"))
    assert message == "an unexpected error (ValueError: bad)"


def test_apply_project_restores_numbers_and_token_ids(qtbot, window, char_model_file):
    from workbench.project import parse_project

    p = parse_project({"format": "seqscope-project", "values": [[1, 2.5], [3, 4]]})
    assert p.values.dtype == np.float32 and p.values.shape == (2, 2)
    p = parse_project({"format": "seqscope-project", "values": [5, 7, 9]})
    assert p.values.dtype == np.int64  # token ids stay ids
    assert parse_project({"format": "seqscope-project"}).units == (0,)
