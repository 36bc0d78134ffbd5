"""The corpus view in the window (pytest-qt, offscreen), on the bundled char-LSTM and a corpus
recorded from held-out files: it lists the sequences, shows the engine's top contexts for the
selected unit, ranks units by a regex over the corpus, matches a span selected in the text, and
a click opens that sequence at that step through the session's normal run (every probe); a
query can be cancelled, and queries run off the GUI thread."""
from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.corpus.correlate import correlate
from engine.corpus.match import match
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus
from engine.corpus.top import top

MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "char-lstm-python"


@pytest.fixture(scope="module")
def model():
    return engine.load(MODEL)


@pytest.fixture(scope="module")
def corpus(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "src").mkdir()
    for p in sorted((MODEL / "heldout").glob("*.py")):
        (d / "src" / p.name).write_text(p.read_text()[:1500])
    out = d / "corpus.h5"
    record(model, Corpus(d / "src"), out, RecordOptions(probes=["layers.0.h", "layers.0.c"], dtype="float16"))
    return out


@pytest.fixture
def opened(window, qtbot, model, corpus):
    s = window.session
    s.set_model(model, str(MODEL))
    s.set_text((MODEL / "sample.py").read_text()[:400])
    qtbot.waitUntil(lambda: s.trace is not None, timeout=30000)
    view = window.views["Corpus"]
    s.open_corpus(str(corpus))
    qtbot.waitUntil(lambda: view.info is not None, timeout=30000)
    return window, view


def test_lists_sequences_and_top_contexts(opened, qtbot, corpus):
    window, view = opened
    s = window.session
    assert view.sequences.rowCount() == 3 and view.sequences.item(0, 1).text() == "difflib.py"
    view.tabs.setCurrentIndex(1)
    view.flush()
    qtbot.waitUntil(lambda: len(view.top_hits) > 0, timeout=30000)
    want = top(corpus, s.probe, s.units[0], view.top_k.value())
    assert [h.position for h in view.top_hits] == [h.position for h in want.hits]
    assert view.top_table.rowCount() == len(want.hits)
    s.select_unit(7)  # follows the selection
    qtbot.waitUntil(lambda: bool(view.top_hits) and view.top_title.text().startswith(f"{s.probe} unit 7:"), timeout=30000)
    assert [h.position for h in view.top_hits] == [h.position for h in top(corpus, s.probe, 7, 20).hits]
    assert not s.runner.gui_thread_ran_job and not view.runner.gui_thread_ran_job


def test_click_opens_the_sequence_at_the_step_with_every_probe(opened, qtbot, corpus):
    window, view = opened
    s = window.session
    view.tabs.setCurrentIndex(1)
    view.flush()
    qtbot.waitUntil(lambda: len(view.top_hits) > 0, timeout=30000)
    hit = view.top_hits[3]
    view.top_table.cellClicked.emit(3, 0)
    qtbot.waitUntil(lambda: view.opened is not None and s.text == view.opened[2] and not s.computing
                    and s.trace is not None and s.trace.n_tokens == len(s.text), timeout=30000)
    with engine.corpus.reader.CorpusReader(corpus) as r:
        a, b = int(r.offsets[hit.sequence]), int(r.offsets[hit.sequence + 1])
        assert s.text == "".join(r.texts(a, b))
    assert s.step == hit.step
    assert s.trace.token_text[hit.step] == hit.token
    assert {"layers.0.h", "layers.1.c", "logits"} <= set(s.trace.arrays)  # the normal run, not the corpus's probes


def test_feature_ranking_over_the_corpus(opened, qtbot, corpus):
    window, view = opened
    view.tabs.setCurrentIndex(2)
    view.regex.setText('"[^"\\n]*"')
    view.run_ranking()
    qtbot.waitUntil(lambda: view.rank_table.rowCount() > 0, timeout=60000)
    want = correlate(corpus, window.session.probe, regex='"[^"\\n]*"')
    assert view.rank_units == want.ranking("r", view.N_RANK).tolist()
    view.rank_table.cellClicked.emit(2, 1)
    assert window.session.units[0] == view.rank_units[2]


def test_match_a_span_selected_in_the_text(opened, qtbot, corpus):
    window, view = opened
    s = window.session
    view._open_row(1, 0)
    qtbot.waitUntil(lambda: view.opened is not None and s.text == view.opened[2] and not s.computing
                    and s.trace.n_tokens == len(s.text), timeout=30000)
    s.set_span((40, 43))
    assert "span 40:43" in view.span_label.text()
    s.corpus_match_requested.emit()  # the text view's context menu
    assert view.tabs.currentIndex() == 3
    qtbot.waitUntil(lambda: view.match_table.rowCount() > 0 or view.match_title.text().startswith("no unit")
                    or "no unit" in view.status.text(), timeout=30000)
    want = match(corpus, s.probe, 1, (40, 43), 0.3, limit=view.N_MATCH)
    assert [(x.position, x.length, x.intersection, x.union) for x in view.match_spans] == \
        [(x.position, x.length, x.intersection, x.union) for x in want.spans]
    assert view.match_spans[0].contains_selection
    view.match_table.cellClicked.emit(4, 0)
    target = view.match_spans[4]
    qtbot.waitUntil(lambda: not s.computing and view.opened[1] == target.sequence and s.step == target.step,
                    timeout=30000)


def test_match_of_a_typed_input_uses_the_windows_own_run(opened, qtbot, corpus):
    window, view = opened
    s = window.session
    s.set_text("def f(x):\n    return \"a string\" + x\n")
    qtbot.waitUntil(lambda: s.trace is not None and s.trace.n_tokens == len(s.text) and not s.computing,
                    timeout=30000)
    s.set_span((24, 28))
    view.run_match()
    qtbot.waitUntil(lambda: view.match_table.rowCount() > 0 or bool(view.status.text()), timeout=30000)
    assert view.match_spans and not any(x.contains_selection for x in view.match_spans)


def test_cancel_and_bad_files(opened, qtbot, tmp_path, monkeypatch):
    window, view = opened
    import threading

    started, release = threading.Event(), threading.Event()

    def slow(should_stop, progress):
        started.set()
        while not should_stop():
            release.wait(0.01)
        raise engine.errors.Cancelled("cancelled")

    view.submit("correlate", slow)
    qtbot.waitUntil(started.is_set, timeout=5000)
    qtbot.waitUntil(view.cancel_button.isVisible, timeout=5000)
    view.cancel_button.click()
    qtbot.waitUntil(lambda: not view.runner.is_busy(), timeout=5000)
    assert view.status.text() == "cancelled" and not view.progress_bar.isVisible()
    (tmp_path / "bad.h5").write_text("no")
    before = window.session.corpus
    window.session.open_corpus(str(tmp_path / "bad.h5"))
    assert window.session.corpus == before and "Could not open the corpus" in window.last_error


def test_the_command_line_opens_a_corpus_with_its_model_on_its_first_sequence(qtbot, corpus, tmp_path):
    """``seqscope-workbench --corpus FILE``: the model the corpus was recorded from is opened
    (its source file), and with no input yet the window shows the corpus's first sequence."""
    from PySide6.QtCore import QSettings

    from workbench import app
    from workbench.corpus_jobs import read_sequence

    args = app.parse_args(["--corpus", str(corpus)])
    w = app.build_window(args, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    s = w.session
    qtbot.waitUntil(lambda: s.trace is not None, timeout=60000)
    assert s.corpus == str(corpus) and Path(s.model_path).resolve() == MODEL.resolve()
    first = read_sequence(str(corpus), 0, 0).text
    assert s.text == first and s.trace.n_tokens == len(first)


def test_a_model_given_beside_the_corpus_is_kept(qtbot, corpus, tmp_path):
    from PySide6.QtCore import QSettings

    from workbench import app

    other = Path(__file__).resolve().parents[1] / "assets" / "models" / "gru-dyck"
    args = app.parse_args([str(other), "--corpus", str(corpus)])
    w = app.build_window(args, settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    s = w.session
    qtbot.waitUntil(lambda: s.corpus is not None and s.trace is not None, timeout=60000)
    assert Path(s.model_path).resolve() == other.resolve()  # not replaced by the corpus's model
