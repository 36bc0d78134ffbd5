"""Analysis functions (engine.analysis: gates, projection, outputs, neurons) and the views that
show them (workbench.views: gates, trajectory, outputs, neuron_search).

Each analysis function is checked against a case worked out by hand or an independent
computation; each view is checked to plot the analysis function's numbers, to send clicks
back to the session, and to show a message (not raise) without a model, a trace or the probe.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis import gates as G
from engine.analysis import neurons as N
from engine.analysis import outputs as O
from engine.analysis import projection as P
from engine.models.stack import from_torch
from engine.probes import ProbeSpec
from engine.tokenizers import CharVocab

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402

from workbench.session import Session  # noqa: E402
from workbench.views._common import TraceKey, visible  # noqa: E402
from workbench.views.gates import GateView  # noqa: E402
from workbench.views.neuron_search import NeuronSearchView  # noqa: E402
from workbench.views.outputs import OutputView  # noqa: E402
from workbench.views.trajectory import TrajectoryView  # noqa: E402

CHARS = sorted(set('abcdefghijklmnopqrstuvwxyz0123456789 "\n()=:,.'))
TEXT = 'x = "hello world"\nprint("a", 12)\ny = f(x, "q")\n' * 3


# -- analysis: gates -----------------------------------------------------------------------------


def test_saturation_counts_strictly_below_and_above_the_thresholds():
    v = np.array([[0.05, 0.50, 0.10],
                  [0.95, 0.95, 0.90],
                  [0.50, 0.05, 0.99],
                  [0.09, 0.91, 0.00]], dtype=np.float32)
    left, right = G.saturation(v)
    np.testing.assert_allclose(left, [2 / 4, 1 / 4, 1 / 4])  # 0.10 is not < 0.1
    np.testing.assert_allclose(right, [1 / 4, 2 / 4, 1 / 4])  # 0.90 is not > 0.9
    left, right = G.saturation(v, low=0.2, high=0.8)
    np.testing.assert_allclose(left, [2 / 4, 1 / 4, 2 / 4])
    with pytest.raises(ValueError):
        G.saturation(np.zeros((0, 3)))


def test_histogram_fractions_sum_to_one_and_clip_into_the_end_bins():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.013, 0.987, size=(500, 7))
    edges, frac = G.histogram(v, bins=10, range=(0, 1))
    counts, ref_edges = np.histogram(v, bins=10, range=(0, 1))
    np.testing.assert_allclose(edges, ref_edges)
    np.testing.assert_allclose(frac, counts / v.size)
    _, frac = G.histogram(np.array([-3.0, 0.5, 7.0]), bins=4, range=(0, 1))
    np.testing.assert_allclose(frac, [1 / 3, 0, 1 / 3, 1 / 3])
    assert G.gate_range("gate_g") == (-1.0, 1.0) and G.gate_range("gate_f") == (0.0, 1.0)
    assert G.row_sample(10, 100) == slice(None) and G.row_sample(1000, 300).step == 4


# -- analysis: projection ---------------------------------------------------------------------------


def test_pca_of_a_rank_one_array_finds_its_direction_and_coordinates():
    rng = np.random.default_rng(1)
    a = rng.normal(size=200)
    v = np.array([3.0, -4.0, 0.0, 12.0])  # |v| = 13, largest entry positive
    centre = np.array([1.0, 2.0, 3.0, 4.0])
    x = (np.outer(a, v) + centre).astype(np.float32)
    r = P.pca(x, k=2)
    np.testing.assert_allclose(r.components[0], v / 13, atol=1e-5)
    np.testing.assert_allclose(r.mean, x.astype(np.float64).mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(r.explained_variance_ratio[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(r.explained_variance[0], np.var(13 * a, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(r.coords[:, 0], 13 * (a - a.mean()), atol=1e-3)
    np.testing.assert_allclose(r.coords[:, 1], 0, atol=1e-3)
    # a subsample finds the same axis, and still projects every row
    big = np.outer(rng.normal(size=3000), v) + centre
    rs = P.pca(big, k=2, max_rows=500)
    assert rs.n_fit == 500 and rs.coords.shape == (3000, 2)
    np.testing.assert_allclose(rs.components[0], v / 13, atol=1e-9)


def test_pca_variance_ratios_of_axis_aligned_data():
    # points (±3, 0) and (0, ±1): variance 4.5 and 0.5 along x and y (ddof=1 over 4 points... twice)
    x = np.array([[3, 0], [-3, 0], [0, 1], [0, -1]], dtype=np.float64)
    r = P.pca(x, k=2)
    np.testing.assert_allclose(r.explained_variance_ratio, [0.9, 0.1])
    np.testing.assert_allclose(np.abs(r.components), np.eye(2), atol=1e-12)
    np.testing.assert_allclose(r.explained_variance, [18 / 3, 2 / 3])
    np.testing.assert_allclose(P.project(x, r.mean, r.components), r.coords)
    assert P.pca(np.ones((5, 3))).explained_variance_ratio.tolist() == [0.0, 0.0]


def test_pca_eigen_and_svd_paths_agree():
    rng = np.random.default_rng(5)
    scales = np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    for n in (10, 13, 400):  # n <= 2u: SVD of the data; n > 2u: eigenvectors of the scatter matrix
        x = rng.normal(size=(n, 6)) * scales @ np.linalg.qr(rng.normal(size=(6, 6)))[0] + 2.0
        r = P.pca(x, k=3)
        xc = x - x.mean(axis=0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        for i in range(3):
            v = vt[i] * np.sign(vt[i][np.argmax(np.abs(vt[i]))])
            np.testing.assert_allclose(r.components[i], v, atol=1e-8)
        np.testing.assert_allclose(r.explained_variance_ratio, s[:3] ** 2 / np.sum(s**2), atol=1e-10)
        np.testing.assert_allclose(r.coords, xc @ r.components.T, atol=1e-9)


# -- analysis: outputs ------------------------------------------------------------------------------


def test_softmax_top_k_and_compare():
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [1000.0, 0.0, 0.0, 0.0]])
    p = O.softmax(logits)
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(logits), -1).numpy())
    ids, probs = O.top_k(p[0], 3)
    assert ids.tolist() == [1, 3, 2]  # tie between 1 and 3: the lower id first
    rows = O.compare(logits[0], np.array([1.0, 3.0, 2.0, 9.0]), k=2)
    pa = O.softmax(np.array([1.0, 3.0, 2.0, 9.0]))
    assert (rows[0].before_id, rows[0].after_id) == (1, 3)
    np.testing.assert_allclose(rows[0].after_change, pa[3] - p[0, 3])


# -- analysis: neurons --------------------------------------------------------------------------------


def test_regex_feature_marks_tokens_inside_matches_within_each_sequence():
    toks = list('a "bc" d')
    np.testing.assert_array_equal(N.regex_feature(toks, '"[^"]*"'), [0, 0, 1, 1, 1, 1, 0, 0])
    # multi-character tokens overlap a match partly: still inside
    np.testing.assert_array_equal(N.regex_feature(["ab", ' "c', 'd"', "e"], '"[^"]*"'), [0, 1, 1, 0])
    # 'x"' + 'y"' would match '"y"' if the sequences were joined; they are not
    toks = ["x", '"', "y", '"']
    np.testing.assert_array_equal(N.regex_feature(toks, '"[^"]*"', offsets=[0, 2, 4]), [0, 0, 0, 0])
    np.testing.assert_array_equal(N.regex_feature(toks, '"[^"]*"', offsets=[0, 4]), [0, 1, 1, 1])
    np.testing.assert_array_equal(N.regex_feature(list("abc"), "x*"), [0, 0, 0])  # empty matches mark nothing
    with pytest.raises(Exception):
        N.regex_feature(list("abc"), "(")


def test_token_classes():
    toks = ["a", "Z", "7", " ", "\t", "\n", " \n", ",", '"', " the", " 42", ""]
    names = [N.TOKEN_CLASSES[c] for c in N.token_classes(toks)]
    assert names == ["letter", "letter", "digit", "space", "space", "newline", "newline", "punctuation",
                     "punctuation", "letter", "digit", "punctuation"]
    np.testing.assert_array_equal(N.class_feature(toks, "digit"), [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(N.input_feature(np.arange(6).reshape(3, 2), 1), [1, 3, 5])


def test_pearson_and_point_biserial_agree_with_corrcoef_and_rank_a_planted_unit_first():
    rng = np.random.default_rng(2)
    n = 300
    mask = rng.random(n) < 0.3
    acts = rng.normal(size=(n, 10)).astype(np.float32)
    acts[:, 7] = mask * 2.0 - 0.5  # equals the feature up to scale and shift: r = 1
    acts[:, 2] = -1.0 * mask + 0.3 * rng.normal(size=n)  # strongly anti-correlated
    acts[:, 5] = 1.5  # constant: r undefined
    f = mask.astype(np.float32)
    r = N.pearson(acts, f)
    for u in (0, 2, 7):
        np.testing.assert_allclose(r[u], np.corrcoef(acts[:, u].astype(np.float64), f)[0, 1], atol=1e-9)
    assert np.isnan(r[5])
    np.testing.assert_allclose(N.point_biserial(acts, mask), r, atol=1e-9, equal_nan=True)
    units, rs = N.rank_units(acts, f)
    assert units[0] == 7 and rs[0] == pytest.approx(1.0) and units[1] == 2 and units[-1] == 5
    units, _ = N.rank_units(acts, f, order="neg")
    assert units[0] == 2
    # a continuous feature: Pearson
    g = rng.normal(size=n)
    acts[:, 3] = 4 * g + 1
    units, rs = N.rank_units(acts, g, method="auto", k=1)
    assert units.tolist() == [3] and rs[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        N.rank_units(acts, g, method="point_biserial")


def test_top_activations_and_contexts_stay_in_their_sequence():
    v = np.array([0.1, 5.0, -7.0, 5.0, 2.0, np.nan])
    assert N.top_activations(v, 2)[0].tolist() == [1, 3]  # tie: earlier first
    assert N.top_activations(v, 1, mode="min")[0].tolist() == [2]
    assert N.top_activations(v, 2, mode="abs")[0].tolist() == [2, 1]
    assert N.top_activations(v, 10)[0].tolist() == [1, 3, 4, 0, 2, 5]  # NaN last
    toks = list("abcdefgh")
    assert N.context(toks, 5, width=2) == ("de", "f", "gh")
    assert N.context(toks, 4, width=3, offsets=[0, 4, 8]) == ("", "e", "fgh")
    rows = N.top_contexts(np.arange(8.0), toks, 2, width=1, offsets=[0, 4, 8])
    assert [(c.position, c.left, c.token, c.right) for c in rows] == [(7, "g", "h", ""), (6, "f", "g", "h")]


# -- views: fixtures ----------------------------------------------------------------------------------


def _lstm_model(head=True, cell=nn.LSTM, layers=2):
    torch.manual_seed(0)
    rnn = cell(8, 12, layers)
    for p in rnn.parameters():  # large weights: gates spread from shut to open
        nn.init.normal_(p, std=0.8)
    emb = nn.Embedding(len(CHARS), 8)
    lin = nn.Linear(12, len(CHARS)) if head else None
    return from_torch(rnn, emb, lin, tokenizer=CharVocab(CHARS))


@pytest.fixture(scope="module")
def lstm():
    return _lstm_model()


@pytest.fixture
def session():
    s = Session()
    yield s
    s.runner.shutdown()


def _put(session, model, trace, clean=None, probe=None):
    session.model = model
    session.trace = trace
    session.clean_trace = clean if clean is not None else trace
    session.probe = probe or session.probe or [s.name for s in model.probe_specs()][-1]
    session.units = session.units or [0]
    session.trace_changed.emit()


def _show(qtbot, view, w=1000, h=480):
    qtbot.addWidget(view)
    view.resize(w, h)
    view.show()
    qtbot.waitExposed(view)
    return view


class _FakeModel:
    """Just enough of a model for the views: a probe table and a tokenizer."""

    def __init__(self, specs, tokenizer=None):
        self._specs = specs
        self.tokenizer = tokenizer
        self.takes_tokens = tokenizer is not None

    def probe_specs(self):
        return self._specs


def _spec(name, width, layer=None, site=""):
    return ProbeSpec(name, (width,), ("token", "unit"), "", layer, site)


def _click_plot_point(qtbot, graphics_view, plot_item, x, y):
    qtbot.wait(10)  # let the view box apply its range
    scene = plot_item.vb.mapViewToScene(QPointF(float(x), float(y)))
    pos = graphics_view.mapFromScene(scene)
    qtbot.mouseClick(graphics_view.viewport(), Qt.LeftButton, pos=QPoint(pos.x(), pos.y()))


def _isolated(xs, ys):
    """Index of the point farthest from its nearest neighbour (a safe place to click)."""
    d = np.hypot(xs[:, None] - xs[None, :], ys[:, None] - ys[None, :])
    np.fill_diagonal(d, np.inf)
    return int(np.argmax(d.min(axis=1)))


def _grab_is_not_blank(view, path):
    img = view.grab().toImage()
    assert img.save(str(path))
    colours = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
    assert len(colours) > 8, f"{path.name} looks blank"


# -- views: gates ----------------------------------------------------------------------------------------


def test_gate_view_plots_the_saturation_of_each_sigmoid_gate_and_clicks_select(qtbot, session, lstm, tmp_path):
    trace = engine.run(lstm, TEXT)
    _put(session, lstm, trace, probe="layers.1.c")
    view = _show(qtbot, GateView(session))
    assert view.message() == "" and view.layer == 1
    assert set(view.data) == {"gate_i", "gate_f", "gate_g", "gate_o"}
    for site in ("gate_i", "gate_f", "gate_o"):
        left, right = G.saturation(trace[f"layers.1.{site}"])
        xs, ys = view._scatters[site].getData()
        np.testing.assert_array_equal(xs, left)
        np.testing.assert_array_equal(ys, right)
        edges, frac = G.histogram(trace[f"layers.1.{site}"], bins=view.BINS, range=(0, 1))
        hx, hy = view._hist_curves[site].getData()
        np.testing.assert_allclose(hx, edges)
        np.testing.assert_allclose(hy, frac)
    assert "gate_g" not in view._scatters and view.data["gate_g"]["tanh"]
    assert "tanh" in view.title.text() and "gate_g" in view.title.text()
    assert len(view._ring.getData()[0]) == 3  # unit 0 of layers.1.c ringed in i, f, o
    assert len(np.unique(np.concatenate([view._scatters[s].getData()[0] for s in ("gate_i", "gate_f")]))) > 3

    # a real mouse click on an isolated point selects that gate probe and unit
    pts = [(site, u, x, y) for site in ("gate_i", "gate_f", "gate_o")
           for u, (x, y) in enumerate(zip(*view._scatters[site].getData()))]
    xs, ys = np.array([p[2] for p in pts]), np.array([p[3] for p in pts])
    site, unit, x, y = pts[_isolated(xs, ys)]
    with qtbot.waitSignal(session.selection_changed):
        _click_plot_point(qtbot, view.graphics, view.sat_plot, x, y)
    assert session.probe == f"layers.1.{site}" and session.units[0] == unit
    np.testing.assert_allclose(np.column_stack(view._ring.getData()), [[x, y]])

    # another layer's probe: the view follows it
    session.select_probe("layers.0.h")
    assert view.layer == 0
    np.testing.assert_array_equal(view._scatters["gate_f"].getData()[0], G.saturation(trace["layers.0.gate_f"])[0])
    _grab_is_not_blank(view, tmp_path / "gates.png")


def test_gate_view_messages_without_model_trace_or_gates(qtbot, session):
    view = _show(qtbot, GateView(session))
    assert "No model" in view.message()
    torch.manual_seed(0)
    rnn = _lstm_model(cell=nn.RNN, layers=1)
    session.model = rnn
    session.probe = "layers.0.h"
    session.model_changed.emit()
    assert "No trace" in view.message()
    _put(session, rnn, engine.run(rnn, TEXT[:20]))
    assert "has no gates" in view.message() and "pre" in view.message()
    # GRU: r and z are sigmoid gates; n is tanh, histogram only
    gru = _lstm_model(cell=nn.GRU, layers=1)
    _put(session, gru, engine.run(gru, TEXT[:30]), probe="layers.0.h")
    assert view.message() == "" and set(view.data) == {"gate_r", "gate_z", "gate_n"}
    assert set(s for s, it in view._scatters.items() if it.isVisible()) == {"gate_r", "gate_z"}
    assert "gate_n" in view.title.text()


# -- views: trajectory -------------------------------------------------------------------------------------


def test_trajectory_view_shows_a_rank_one_state_on_its_first_axis(qtbot, session):
    rng = np.random.default_rng(3)
    a = np.concatenate([np.linspace(-2, 2, 30), np.linspace(1, -1, 20)])
    v = np.array([2.0, -1.0, 2.0])  # |v| = 3
    h = np.outer(a, v).astype(np.float32) + 5
    text = "".join(rng.choice(list('ab1 ."\n'), size=50))
    specs = [_spec("layers.0.h", 3, 0, "h")]
    trace = engine.Trace(tokens=np.zeros(50), offsets=[0, 30, 50], arrays={"layers.0.h": h},
                         specs={s.name: s for s in specs}, token_text=list(text))
    model = _FakeModel(specs, CharVocab(sorted(set(text))))
    _put(session, model, trace, probe="layers.0.h")
    view = _show(qtbot, TrajectoryView(session))
    assert view.message() == "" and view.probe == "layers.0.h"
    xs, ys = view._points.getData()
    np.testing.assert_allclose(xs, 3 * (a - a.mean()), atol=1e-4)
    np.testing.assert_allclose(ys, 0, atol=1e-4)
    assert "PC1 (100.0% of variance)" in view.plot_item.getAxis("bottom").labelText
    # the line breaks between the two sequences
    connect = view._line.opts["connect"]
    assert not connect[29] and connect[:29].all() and connect[30:49].all()
    # the cursor is marked
    session.set_step(7)
    np.testing.assert_allclose(np.ravel(view._marker.getData()), [3 * (a[7] - a.mean()), 0], atol=1e-4)
    # clicking the extreme point moves the cursor there
    t = int(np.argmax(a))
    with qtbot.waitSignal(session.selection_changed):
        _click_plot_point(qtbot, view.plot, view.plot_item, xs[t], ys[t])
    assert session.step == t
    # colour by token class: each class's points are its tokens
    view.colour_by.setCurrentIndex(1)
    classes = N.token_classes(list(text))
    for c, name in enumerate(N.TOKEN_CLASSES):
        np.testing.assert_array_equal(view._class_points[name].data["data"], np.flatnonzero(classes == c))


def test_trajectory_view_projects_the_steered_trace_on_the_clean_axes(qtbot, session, lstm, tmp_path):
    clean = engine.run(lstm, TEXT)
    iv = engine.Intervention(probe="layers.1.c", op="zero", positions=engine.Span(40))
    steered = engine.run(lstm, TEXT, interventions=[iv])
    _put(session, lstm, steered, clean, probe="layers.1.c")
    view = _show(qtbot, TrajectoryView(session))
    ref = P.pca(clean["layers.1.h"], k=2, max_rows=view.MAX_FIT_ROWS)
    np.testing.assert_allclose(view.result.coords, ref.coords, atol=1e-9)
    np.testing.assert_allclose(view.coords, P.project(steered["layers.1.h"], ref.mean, ref.components), atol=1e-9)
    np.testing.assert_allclose(view.coords[:40], ref.coords[:40], atol=1e-5)  # before the edit: unchanged
    assert not np.allclose(view.coords[41:], ref.coords[41:], atol=1e-3)
    assert len(view._clean_line.getData()[0]) == clean.n_tokens
    _grab_is_not_blank(view, tmp_path / "trajectory.png")


def test_trajectory_view_without_hidden_state_or_text(qtbot, session):
    view = _show(qtbot, TrajectoryView(session))
    assert "No model" in view.message()
    specs = [_spec("layers.0.c", 4, 0, "c")]
    trace = engine.Trace(tokens=np.zeros(6), offsets=[0, 6], arrays={"layers.0.c": np.ones((6, 4))},
                         specs={s.name: s for s in specs})
    _put(session, _FakeModel(specs), trace, probe="layers.0.c")
    assert "no hidden state" in view.message()
    # numeric input: no token classes, coloured by position
    torch.manual_seed(0)
    model = from_torch(nn.LSTM(3, 5))
    trace = engine.run(model, np.random.default_rng(0).normal(size=(25, 3)).astype(np.float32))
    _put(session, model, trace, probe="layers.0.h")
    view.colour_by.setCurrentIndex(1)
    assert view.message() == "" and len(view._points.getData()[0]) == 25
    assert "numeric input" in view.info.text()


# -- views: outputs ----------------------------------------------------------------------------------------


def test_output_view_shows_softmax_top_k_before_and_after_an_intervention(qtbot, session, lstm, tmp_path):
    session.text = TEXT
    view = _show(qtbot, OutputView(session))
    with qtbot.waitSignal(session.trace_changed, timeout=20000):
        session.set_model(lstm)
    assert view.message() == ""
    session.set_step(5)
    p = O.softmax(session.trace.logits[5])
    top = int(np.argmax(p))
    assert view.rows[0].before_id == top and view.rows[0].before_p == pytest.approx(p[top])
    assert view.table.item(0, 1).text() == visible(lstm.tokenizer.piece(top))
    assert view.table.item(0, 2).text() == f"{p[top]:.3f}"
    assert "no interventions" in view.header.text()
    # push the newline's logit at step 5: after = newline, before unchanged
    nl = CHARS.index("\n")
    with qtbot.waitSignal(session.trace_changed, timeout=20000):
        session.add_intervention(engine.Intervention(probe="logits", op="add", value=20.0, positions=[5], units=[nl]))
    pa = O.softmax(session.trace.logits[5])
    assert view.rows[0].before_id == top and view.rows[0].before_p == pytest.approx(p[top])
    assert view.rows[0].after_id == nl and view.rows[0].after_p == pytest.approx(pa[nl])
    assert view.rows[0].after_change == pytest.approx(pa[nl] - p[nl])
    assert view.table.item(0, 3).text() == "⏎" and view.table.item(0, 5).text().startswith("+")
    assert "before | after" in view.header.text()
    # another step: the intervention acted only at step 5
    session.set_step(2)
    assert view.rows[0].before_id == view.rows[0].after_id
    _grab_is_not_blank(view, tmp_path / "outputs.png")


def test_output_view_without_logits_and_for_numeric_models(qtbot, session):
    view = _show(qtbot, OutputView(session))
    assert "No model" in view.message()
    headless = _lstm_model(head=False)
    _put(session, headless, engine.run(headless, TEXT[:10]), probe="layers.1.h")
    assert "no output head" in view.message()
    torch.manual_seed(0)
    numeric = from_torch(nn.GRU(2, 4), None, nn.Linear(4, 3))
    trace = engine.run(numeric, np.random.default_rng(0).normal(size=(9, 2)).astype(np.float32))
    _put(session, numeric, trace, probe="layers.0.h")
    session.set_step(4)
    assert view.message() == "" and view.table.rowCount() == 3
    assert view.table.item(0, 1).text() == f"#{int(np.argmax(trace.logits[4]))}"


# -- views: neuron search -------------------------------------------------------------------------------------


def _planted(text, unit=4, width=6, negative=1):
    rng = np.random.default_rng(4)
    toks = list(text)
    f = N.regex_feature(toks, '"[^"]*"')
    h = rng.normal(size=(len(toks), width)).astype(np.float32)
    h[:, unit] = f
    h[:, negative] = -2 * f + 0.1 * rng.normal(size=len(toks))  # low inside strings
    specs = [_spec("layers.0.h", width, 0, "h")]
    trace = engine.Trace(tokens=np.zeros(len(toks)), offsets=[0, len(toks)], arrays={"layers.0.h": h},
                         specs={s.name: s for s in specs}, token_text=toks)
    return _FakeModel(specs, CharVocab(sorted(set(text)))), trace, f


def test_neuron_search_finds_a_planted_unit_and_clicks_select_it(qtbot, session):
    model, trace, f = _planted(TEXT)
    _put(session, model, trace, probe="layers.0.h")
    view = _show(qtbot, NeuronSearchView(session))
    view.set_regex('"[^"]*"')
    assert view.message() == "" and view.ranking_message() == ""
    assert view.units[0] == 4 and view.r[0] == pytest.approx(1.0)
    assert view.ranking.item(0, 0).text() == "4" and view.ranking.item(0, 1).text() == "+1.000"
    assert "point-biserial" in view.status.text()
    units, r = N.rank_units(trace["layers.0.h"], f)
    np.testing.assert_array_equal(view.units, units)
    # click the top row: unit 4 selected; its top contexts are inside string literals
    rect = view.ranking.visualItemRect(view.ranking.item(0, 0))
    with qtbot.waitSignal(session.selection_changed):
        qtbot.mouseClick(view.ranking.viewport(), Qt.LeftButton, pos=rect.center())
    assert session.units[0] == 4
    pos, _ = N.top_activations(trace["layers.0.h"][:, 4], view.N_CONTEXTS)
    assert [c.position for c in view.context_rows] == pos.tolist()
    assert all(f[c.position] == 1 for c in view.context_rows)
    assert view.contexts.item(0, 3).text() == visible(TEXT[pos[0]])
    # click a context: the cursor moves there
    rect = view.contexts.visualItemRect(view.contexts.item(2, 0))
    qtbot.mouseClick(view.contexts.viewport(), Qt.LeftButton, pos=rect.center())
    assert session.step == pos[2]
    # pin
    qtbot.mouseClick(view.pin_button, Qt.LeftButton)
    assert ("layers.0.h", 4) in session.pinned and "layers.0.h:4" in view.pinned_label.text()
    # a unit anti-correlated with the feature: its lowest positions (inside strings) are shown
    session.select_unit(1)
    assert view.r[list(view.units).index(1)] < -0.9 and "lowest" in view.contexts_title.text()
    assert all(f[c.position] == 1 for c in view.context_rows)
    view.context_mode.setCurrentIndex(1)  # highest
    assert "highest" in view.contexts_title.text() and all(f[c.position] == 0 for c in view.context_rows)
    # a bad pattern, a pattern that matches nothing, a token class
    view.set_regex("(")
    assert "Not a valid regular expression" in view.ranking_message()
    view.set_regex("zzz")
    assert "same at every token" in view.ranking_message()
    view.set_token_class("digit")
    np.testing.assert_array_equal(view.feature, N.class_feature(list(TEXT), "digit"))
    assert view.ranking.rowCount() == 6


def test_neuron_search_on_a_real_trace_numeric_inputs_and_missing_probes(qtbot, session, lstm, tmp_path):
    view = _show(qtbot, NeuronSearchView(session))
    assert "No model" in view.message()
    trace = engine.run(lstm, TEXT)
    _put(session, lstm, trace, probe="layers.1.c")
    view.set_regex('"[^"]*"')
    units, r = N.rank_units(trace["layers.1.c"], N.regex_feature(trace.token_text, '"[^"]*"'))
    np.testing.assert_array_equal(view.units, units)
    np.testing.assert_allclose(view.r, r)
    _grab_is_not_blank(view, tmp_path / "neuron_search.png")
    # with an intervention: the search runs on the clean trace unless asked otherwise
    iv = engine.Intervention(probe="layers.1.c", op="set", value=5.0, positions=engine.Span(10), units=[int(units[0])])
    steered = engine.run(lstm, TEXT, interventions=[iv])
    session.interventions = [iv]
    _put(session, lstm, steered, trace, probe="layers.1.c")
    np.testing.assert_allclose(view.r, r)
    assert "without interventions" in view.status.text()
    session.select_unit(int(units[0]))
    view.context_mode.setCurrentIndex(1)  # highest, whatever the sign of r
    view.steered.setChecked(True)
    _, r2 = N.rank_units(steered["layers.1.c"], N.regex_feature(trace.token_text, '"[^"]*"'))
    np.testing.assert_allclose(view.r, r2)
    assert "with interventions" in view.status.text() and view.context_rows[0].value == pytest.approx(5.0)
    view.steered.setChecked(False)
    # a probe the trace lacks
    session.probe = "layers.7.c"
    session.selection_changed.emit()
    assert "did not record" in view.message()
    # numeric input: the feature is an input column
    torch.manual_seed(0)
    model = from_torch(nn.LSTM(3, 5))
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    trace = engine.run(model, x)
    _put(session, model, trace, probe="layers.0.h")
    assert view.kind.currentIndex() == 2  # switched to input column: there is no text
    view.set_input_column(1)
    units, r = N.rank_units(trace["layers.0.h"], x[:, 1])
    np.testing.assert_array_equal(view.units, units)
    assert "Pearson" in view.status.text() and view.contexts.rowCount() > 0


def test_trace_key_survives_clean_reruns_and_views_reuse_their_work(qtbot, session, lstm):
    a, b = engine.run(lstm, TEXT[:40]), engine.run(lstm, TEXT[:40])
    key = TraceKey(lstm, a)
    assert key.matches(lstm, a) and key.matches(lstm, b)
    assert not key.matches(lstm, engine.run(lstm, TEXT[:41])) and not key.matches(_lstm_model(), b)
    iv = engine.Intervention(probe="layers.0.h", op="zero", positions=[3])
    s1, s2 = engine.run(lstm, TEXT[:40], interventions=[iv]), engine.run(lstm, TEXT[:40], interventions=[iv])
    assert TraceKey(lstm, s1).matches(lstm, s1) and not TraceKey(lstm, s1).matches(lstm, s2)
    # the trajectory's PCA is not refitted for a clean re-run of the same input
    _put(session, lstm, a, probe="layers.1.h")
    view = _show(qtbot, TrajectoryView(session))
    fitted = view.result
    _put(session, lstm, s1, b)
    assert view.result is fitted
    np.testing.assert_allclose(view.coords, P.project(s1["layers.1.h"], fitted.mean, fitted.components))
    _put(session, lstm, engine.run(lstm, TEXT[:41]), probe="layers.1.h")
    assert view.result is not fitted and len(view.coords) == 41


def test_hidden_views_refresh_when_shown(qtbot, session, lstm):
    trace = engine.run(lstm, TEXT[:30])
    view = GateView(session)
    qtbot.addWidget(view)
    _put(session, lstm, trace, probe="layers.0.c")
    assert view._lazy.pending and not view.data  # hidden: nothing computed yet
    view.flush()
    assert view.layer == 0 and "gate_f" in view.data
