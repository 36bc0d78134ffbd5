"""Interventions act inside the recurrence: causality, hand-computed cases, every op, patching,
bidirectional layers, JSON round trips, and clear errors."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine import Intervention, InterventionError, PatchSource, Span
from engine.interventions import interventions_from_json, interventions_to_json, load_interventions, save_interventions
from engine.models.stack import from_torch
from reference import float64_weights, reference_stack


def lstm_model(seed=0, layers=2, H=10, F=4, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    rnn = nn.LSTM(F, H, layers, **kw).to(dtype)
    return rnn, from_torch(rnn)


def inputs(T=40, F=4, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((T, F)).astype(dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("site", ["h", "first_gate"])
def test_steps_before_t_are_bit_identical_and_later_steps_change(cell, site):
    torch.manual_seed(3)
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](4, 10, 2)
    model = from_torch(rnn)
    site = {"lstm": "gate_f", "gru": "gate_z", "rnn": "pre"}[cell] if site == "first_gate" else site
    x = inputs(70)
    t = 27  # inside a chunk of 8, not on a boundary
    clean = engine.run(model, x, chunk=8)
    edited = engine.run(model, x, interventions=[Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t))],
                        chunk=8)
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    for name in ["layers.0.h", "layers.1.h"]:
        assert np.abs(edited[name][t:] - clean[name][t:]).max() > 1e-3, name


def test_hand_computed_one_step_edit_of_the_cell_state():
    """Set c of unit 2 at step 5 to 3.0: h at step 5 must be o_5 * tanh(3.0) for that unit, and
    step 6 must be what the LSTM equations give from the edited state."""
    rnn, model = lstm_model(seed=4, layers=1, H=6, F=3, dtype=torch.float64)
    x = inputs(10, 3, dtype=np.float64)
    iv = Intervention("layers.0.c", "set", 3.0, positions=[5], units=[2])
    tr = engine.run(model, x, interventions=[iv], chunk=4)
    o5 = tr["layers.0.gate_o"][5, 2]
    assert tr["layers.0.c"][5, 2] == 3.0
    assert tr["layers.0.h"][5, 2] == pytest.approx(o5 * np.tanh(3.0), abs=1e-14)
    # step 6 by hand, from the edited state
    w = float64_weights(rnn)
    h5, c5 = tr["layers.0.h"][5], tr["layers.0.c"][5]
    pre = w["weight_ih_l0"] @ x[6] + w["bias_ih_l0"] + w["weight_hh_l0"] @ h5 + w["bias_hh_l0"]
    i, f, g, o = np.split(pre, 4)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c6 = sig(f) * c5 + sig(i) * np.tanh(g)
    np.testing.assert_allclose(tr["layers.0.c"][6], c6, atol=1e-12)
    np.testing.assert_allclose(tr["layers.0.h"][6], sig(o) * np.tanh(c6), atol=1e-12)
    # and the whole run agrees with the float64 reference stepped with the same override
    ref = reference_stack("lstm", w, x, 1, overrides={("layers.0.c", 5): lambda c: np.where(np.arange(6) == 2, 3.0, c)})
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-12, err_msg=name)


def test_zeroing_the_forget_gate_everywhere_equals_a_minus_infinite_forget_bias():
    rnn, model = lstm_model(seed=5, layers=2)
    x = inputs(50)
    edited = engine.run(model, x, interventions=[Intervention("layers.0.gate_f", "zero")], chunk=16)
    H = rnn.hidden_size
    with torch.no_grad():
        rnn.bias_ih_l0[H:2 * H] = -float("inf")
    amnesic = engine.run(from_torch(rnn), x, chunk=16)
    assert np.all(edited["layers.0.gate_f"] == 0)
    assert np.all(amnesic["layers.0.gate_f"] == 0)
    for name in ["layers.0.c", "layers.0.h", "layers.1.h", "layers.1.c"]:
        np.testing.assert_allclose(edited[name], amnesic[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("op,value,expect", [
    ("zero", None, lambda old: np.zeros_like(old)),
    ("set", [1.5, -2.0], lambda old: np.broadcast_to([1.5, -2.0], old.shape)),
    ("add", 0.25, lambda old: old + 0.25),
    ("scale", -1.0, lambda old: -old),
])
def test_each_op_edits_exactly_the_chosen_positions_and_units(op, value, expect):
    rnn, model = lstm_model(seed=6, layers=1)
    x = inputs(30)
    units, positions = [1, 7], [3, 11, 12]
    clean = engine.run(model, x, chunk=8)
    iv = Intervention("layers.0.gate_i", op, value, positions=positions, units=units)
    tr = engine.run(model, x, interventions=[iv], chunk=8)
    g = tr["layers.0.gate_i"]
    # the first edited step sees the clean input, so the edit is exact there
    np.testing.assert_allclose(g[3, units], expect(clean["layers.0.gate_i"][3, units]), atol=1e-6)
    others = [u for u in range(10) if u not in units]
    np.testing.assert_allclose(g[3, others], clean["layers.0.gate_i"][3, others], atol=1e-6)
    # at later edited steps the value follows the op applied to that run's own gate
    unedited = engine.run(model, x, interventions=[Intervention("layers.0.gate_i", op, value, positions=[3], units=units)],
                          chunk=8)
    np.testing.assert_allclose(g[4], unedited["layers.0.gate_i"][4], atol=1e-6)


def test_patch_from_another_trace_makes_the_layer_follow_the_source():
    rnn, model = lstm_model(seed=7, layers=2)
    a, b = inputs(40, seed=1), inputs(40, seed=2)
    src = engine.run(model, a, chunk=8)
    # patching layer 0's h and c at every step makes layer 1 see exactly run A's inputs
    ivs = [Intervention("layers.0.h", "patch", src["layers.0.h"]), Intervention("layers.0.c", "patch", src["layers.0.c"])]
    tr = engine.run(model, b, interventions=ivs, chunk=8)
    np.testing.assert_array_equal(tr["layers.0.h"], src["layers.0.h"])
    np.testing.assert_allclose(tr["layers.1.h"], src["layers.1.h"], atol=1e-6)
    # patching one unit from step 20 on leaves steps < 20 as run B's own
    clean_b = engine.run(model, b, chunk=8)
    part = Intervention("layers.1.c", "patch", src["layers.1.c"], positions=Span(20), units=[4])
    tr2 = engine.run(model, b, interventions=[part], chunk=8)
    np.testing.assert_array_equal(tr2["layers.1.c"][:20], clean_b["layers.1.c"][:20])
    np.testing.assert_array_equal(tr2["layers.1.c"][20:, 4], src["layers.1.c"][20:, 4])


def test_patch_from_a_trace_file(tmp_path):
    pytest.importorskip("h5py")
    rnn, model = lstm_model(seed=8, layers=1)
    a, b = inputs(25, seed=1), inputs(25, seed=2)
    src = engine.run(model, a)
    path = tmp_path / "source.h5"
    engine.save_trace(src, path)
    iv = Intervention("layers.0.h", "patch", PatchSource(str(path)))
    tr = engine.run(model, b, interventions=[iv])
    np.testing.assert_array_equal(tr["layers.0.h"], src["layers.0.h"])


def test_embed_and_logits_interventions():
    torch.manual_seed(9)
    emb, rnn, head = nn.Embedding(9, 4), nn.GRU(4, 8), nn.Linear(8, 9)
    model = from_torch(rnn, emb, head)
    ids = np.random.default_rng(0).integers(0, 9, 30)
    clean = engine.run(model, ids)
    tr = engine.run(model, ids, interventions=[Intervention("embed", "zero", positions=[10]),
                                               Intervention("logits", "set", 7.0, units=[3])])
    assert np.all(tr["embed"][10] == 0)
    np.testing.assert_array_equal(tr["layers.0.h"][:10], clean["layers.0.h"][:10])
    assert not np.allclose(tr["layers.0.h"][10], clean["layers.0.h"][10])
    assert np.all(tr["logits"][:, 3] == 7.0)


def test_bidirectional_backward_units_change_only_earlier_steps():
    torch.manual_seed(10)
    rnn = nn.LSTM(4, 6, 1, bidirectional=True)
    model = from_torch(rnn)
    x = inputs(30)
    clean = engine.run(model, x, chunk=8)
    iv = Intervention("layers.0.c", "add", 2.0, positions=[20], units=[6 + 1])  # backward unit 1
    tr = engine.run(model, x, interventions=[iv], chunk=8)
    h, h0 = tr["layers.0.h"], clean["layers.0.h"]
    np.testing.assert_array_equal(h[:, :6], h0[:, :6])  # the forward direction is untouched
    np.testing.assert_array_equal(h[21:, 6:], h0[21:, 6:])  # backward steps after 20 come first: untouched
    assert tr["layers.0.c"][20, 7] == pytest.approx(clean["layers.0.c"][20, 7] + 2.0, abs=1e-6)
    assert np.abs(h[:20, 6:] - h0[:20, 6:]).max() > 1e-4


def test_batched_sequences_each_edited_at_their_own_positions():
    rnn, model = lstm_model(seed=11, layers=1)
    xs = [inputs(30, seed=1), inputs(12, seed=2)]
    iv = Intervention("layers.0.h", "zero", positions=[5, 20])
    tr = engine.run(model, xs, interventions=[iv], chunk=8)
    alone = [engine.run(model, x, interventions=[iv], chunk=8) for x in xs]
    for s in range(2):
        np.testing.assert_allclose(tr.array("layers.0.h", s), alone[s]["layers.0.h"], atol=1e-6)
        assert np.all(tr.array("layers.0.h", s)[5] == 0)


def test_json_round_trip(tmp_path):
    ivs = [
        Intervention("layers.0.c", "set", [1.0, 2.0], positions=range(3, 9), units=[0, 5]),
        Intervention("layers.1.gate_f", "zero"),
        Intervention("layers.0.h", "add", 0.5, positions=[1, 4, 2]),
        Intervention("layers.0.h", "patch", PatchSource("other.h5", "layers.0.h", 1), positions=Span(10)),
        Intervention("embed", "patch", np.arange(6, dtype=np.float32).reshape(3, 2)),
        Intervention("embed", "patch", np.linspace(0, 1, 4).reshape(2, 2)),  # float64 stays float64
    ]
    again = interventions_from_json(interventions_to_json(ivs))
    assert again == ivs
    assert ivs[2].positions == (1, 2, 4)
    path = tmp_path / "steer.json"
    save_interventions(path, ivs)
    assert load_interventions(path) == ivs
    assert json.loads(path.read_text())[0]["positions"] == {"start": 3, "stop": 9}


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.7.h", "zero"), "no probe point"),
    (Intervention("layers.0.h", "zero", units=[10]), "units \\[10\\] do not exist"),
    (Intervention("layers.0.h", "set", [1.0, 2.0, 3.0]), "3 numbers but 10 units"),
    (Intervention("layers.0.h", "add", 0.5, positions=[20, 30]), "positions 20, 30 would change nothing.*20 tokens"),
    (Intervention("layers.0.h", "set", 1e300), "too large for this model's float32"),
    (Intervention("layers.0.h", "patch", np.zeros((20, 3), np.float32)), "shaped \\(20, 3\\)"),
    (Intervention("layers.0.h", "patch", PatchSource("/no/such/trace.h5")), "patch for layers.0.h: no trace file"),
    (Intervention("layers.0.h", "patch", np.zeros((5, 10), np.float32), positions=[8]), "source has 5 tokens"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    rnn, model = lstm_model(seed=12, layers=1)
    with pytest.raises(InterventionError, match=message):
        engine.run(model, inputs(20), interventions=[iv])


def test_malformed_intervention_data_is_refused():
    with pytest.raises(InterventionError, match="unknown op"):
        Intervention("layers.0.h", "clamp", 1.0)
    with pytest.raises(InterventionError, match="needs a value"):
        Intervention("layers.0.h", "set")
    with pytest.raises(InterventionError, match="3 numbers but 2 units"):
        Intervention("layers.0.h", "set", [1.0, 2.0, 3.0], units=[0, 1])
    with pytest.raises(InterventionError, match="not valid JSON"):
        interventions_from_json("{probe: ")
    with pytest.raises(InterventionError, match="unknown key .*bogus.*keys are probe, op"):
        interventions_from_json('[{"probe": "layers.0.h", "bogus": 1}]')
