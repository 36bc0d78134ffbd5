"""Stacks whose layers differ in cell, size or direction (issue 11 item 3), and heads that are not
one linear layer (item 4): golden tests against Keras 3 (float64) and torch, every probe,
interventions and the prefix cache on such stacks, the config's JSON form, and refusals.

Keras semantics checked here with Keras 3 itself (KERAS_BACKEND=torch):

* ``go_backwards=True`` with ``return_sequences=True`` returns the outputs *in the order the
  layer computed them*: output j is the state after reading tokens T-1 … T-1-j (the forward
  layer run on the reversed input, not flipped back), so the next layer reads the sequence
  reversed; SeqScope records output j at token T-1-j.
* ``Bidirectional`` puts the backward layer's outputs back in time order and then merges:
  concat [forward, backward], sum, mul, ave ((f + b) / 2).
"""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine import Intervention, PrefixCache, Span
from engine.errors import LoadError
from engine.models.stack import LayerSpec, RecurrentStack, StackConfig, from_torch

os.environ.setdefault("KERAS_BACKEND", "torch")

#: Keras's float64 layers against SeqScope's float64 stack: measured up to 1.6e-7 (Keras 3's torch
#: backend rounds some of its recurrent ops through float32 even with floatx float64)
KERAS_TOL = 1e-6
#: float64 against float64 torch modules: the same equations, different summation orders
TORCH_TOL = 1e-12


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    before = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    yield keras
    keras.backend.set_floatx(before)


def keras_layer_weights(layer, kind: str, k: int, out: dict, sfx: str = "") -> None:
    """A Keras SimpleRNN/LSTM/GRU layer's weights under canonical names (written here from
    Keras's documented layout, independently of SeqScope's Keras readers): kernels are input ×
    units; LSTM gates i, f, c, o (torch's order); GRU gates z, r, h (reordered to r, z, n); a
    reset_after GRU keeps two bias rows (input, recurrent)."""
    w = layer.get_weights()
    kernel, rec = w[0], w[1]
    units = rec.shape[0]
    order = np.arange(kernel.shape[1])
    if kind == "gru":
        order = np.concatenate([np.arange(units, 2 * units), np.arange(units), np.arange(2 * units, 3 * units)])
    out[f"rnn.weight_ih_l{k}{sfx}"] = torch.tensor(kernel[:, order].T.copy())
    out[f"rnn.weight_hh_l{k}{sfx}"] = torch.tensor(rec[:, order].T.copy())
    if len(w) > 2:
        bias = w[2]
        b_ih, b_hh = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros_like(bias))
        out[f"rnn.bias_ih_l{k}{sfx}"] = torch.tensor(b_ih[order].copy())
        out[f"rnn.bias_hh_l{k}{sfx}"] = torch.tensor(b_hh[order].copy())


def dense_weights(layer, out):
    kernel, bias = layer.get_weights()
    out["head.weight"] = torch.tensor(kernel.T.copy())
    out["head.bias"] = torch.tensor(bias)


def keras_out(model_or_layer, x):
    y = model_or_layer(x[None])
    return np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)[0]


# -- Keras semantics ---------------------------------------------------------------------------


def test_go_backwards_layer_and_the_layer_above_it_match_keras(keras):
    """SimpleRNN(go_backwards) → GRU(reset_after=False, hard sigmoid) → Dense: Keras's output j
    is SeqScope's record at token T-1-j, for the reversed layer and everything above it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3))
    inp = keras.Input((7, 3))
    rnn = keras.layers.SimpleRNN(5, return_sequences=True, go_backwards=True, seed=1)
    gru = keras.layers.GRU(4, return_sequences=True, reset_after=False, recurrent_activation="hard_sigmoid", seed=2)
    dense = keras.layers.Dense(2)
    y0 = rnn(inp)
    y1 = gru(y0)
    kmodel = keras.Model(inp, [y0, y1, dense(y1)])
    for v in kmodel.weights:  # non-zero biases, so that a bias in the wrong place shows
        v.assign(rng.normal(size=v.shape) * 0.5)
    k0, k1, klog = (np.asarray(a.detach().cpu().numpy())[0] for a in kmodel(x[None]))
    # Keras's own statement of go_backwards: the forward layer on the reversed input, not flipped back
    fwd = keras.layers.SimpleRNN(5, return_sequences=True)
    fwd.build((None, 7, 3))
    fwd.set_weights(rnn.get_weights())
    np.testing.assert_allclose(keras_out(fwd, x[::-1].copy()), k0, atol=1e-12)

    w = {}
    keras_layer_weights(rnn, "rnn", 0, w)
    keras_layer_weights(gru, "gru", 1, w)
    dense_weights(dense, w)
    cfg = StackConfig.from_layers([
        LayerSpec("rnn_tanh", 3, 5, reversed=True),
        LayerSpec("gru", 5, 4, reset_after=False, recurrent_activation="hard_sigmoid_keras3")], output_size=2)
    model = RecurrentStack(cfg, w, dtype=torch.float64)
    assert model.bidirectional and model.output_reversed  # it sees the future; Keras's order is reversed
    assert "first token" in model.info()["output_order"]
    t = engine.run(model, x)
    np.testing.assert_allclose(t["layers.0.h"][::-1], k0, atol=KERAS_TOL)
    np.testing.assert_allclose(t["layers.1.h"][::-1], k1, atol=KERAS_TOL)
    np.testing.assert_allclose(t["logits"][::-1], klog, atol=KERAS_TOL)
    # the reversed layer's state at token t has read tokens t..T-1: changing token 0 changes only
    # its record at token 0
    x2 = x.copy()
    x2[0] += 1.0
    t2 = engine.run(model, x2)
    np.testing.assert_array_equal(t2["layers.0.h"][1:], t["layers.0.h"][1:])
    assert not np.allclose(t2["layers.0.h"][0], t["layers.0.h"][0])


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_merge_modes_match_keras(keras, mode):
    """Bidirectional(LSTM 4, merge_mode) → LSTM 3 → Dense 2, a typical Keras classifier."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5))
    inp = keras.Input((6, 5))
    bi = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode=mode)
    top = keras.layers.LSTM(3, return_sequences=True)
    dense = keras.layers.Dense(2)
    y0 = bi(inp)
    kmodel = keras.Model(inp, [y0, dense(top(y0))])
    for v in kmodel.weights:
        v.assign(rng.normal(size=v.shape) * 0.5)
    k0, klog = (np.asarray(a.detach().cpu().numpy())[0] for a in kmodel(x[None]))

    w = {}
    keras_layer_weights(bi.forward_layer, "lstm", 0, w)
    keras_layer_weights(bi.backward_layer, "lstm", 0, w, "_reverse")
    keras_layer_weights(top, "lstm", 1, w)
    dense_weights(dense, w)
    width = 8 if mode == "concat" else 4
    cfg = StackConfig.from_layers([LayerSpec("lstm", 5, 4, bidirectional=True, merge_mode=mode),
                                   LayerSpec("lstm", width, 3)], output_size=2)
    model = RecurrentStack(cfg, w, dtype=torch.float64)
    t = engine.run(model, x)
    assert t["layers.0.h"].shape == (6, 8)  # both directions' states, whatever the merge
    handed_on = "layers.0.h" if mode == "concat" else "layers.0.merged"
    assert (handed_on == "layers.0.merged") == ("layers.0.merged" in t.probes)
    np.testing.assert_allclose(t[handed_on], k0, atol=KERAS_TOL)
    np.testing.assert_allclose(t["logits"], klog, atol=KERAS_TOL)


def test_keras_stack_of_three_cell_kinds(keras):
    """LSTM(hard_sigmoid gates) → GRU(reset_after=True) → SimpleRNN(relu) of different sizes."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 4))
    inp = keras.Input((9, 4))
    a = keras.layers.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid")
    b = keras.layers.GRU(3, return_sequences=True)
    c = keras.layers.SimpleRNN(5, return_sequences=True, activation="relu")
    y = c(b(a(inp)))
    kmodel = keras.Model(inp, y)
    for v in kmodel.weights:
        v.assign(rng.normal(size=v.shape) * 0.5)
    ky = keras_out(kmodel, x)
    w = {}
    for k, (layer, kind) in enumerate([(a, "lstm"), (b, "gru"), (c, "rnn")]):
        keras_layer_weights(layer, kind, k, w)
    cfg = StackConfig.from_layers([LayerSpec("lstm", 4, 6, recurrent_activation="hard_sigmoid_keras3"),
                                   LayerSpec("gru", 6, 3), LayerSpec("rnn_relu", 3, 5)])
    t = engine.run(RecurrentStack(cfg, w, dtype=torch.float64), x)
    np.testing.assert_allclose(t["layers.2.h"], ky, atol=KERAS_TOL)


# -- torch ------------------------------------------------------------------------------------------


class TwoModules(nn.Module):
    """A torch classifier as people write it: an embedding, ``self.lstm1`` and ``self.gru2`` of
    other sizes, a linear head."""

    def __init__(self, head=None):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.lstm1 = nn.LSTM(6, 8, bidirectional=True, batch_first=True)
        self.gru2 = nn.GRU(16, 4, batch_first=True)
        self.fc = head if head is not None else nn.Linear(4, 3)

    def core(self, ids):
        y1, _ = self.lstm1(self.emb(ids))
        y2, _ = self.gru2(y1)
        return y1, y2


def test_torch_modules_of_different_kinds_match_torch(tmp_path):
    torch.manual_seed(3)
    m = TwoModules().double()
    ids = torch.tensor([[1, 5, 7, 3, 19, 0, 2]])
    with torch.no_grad():
        y1, y2 = m.core(ids)
        logits = m.fc(y2)
    direct = from_torch([m.lstm1, m.gru2], m.emb, m.fc)
    p = tmp_path / "two.pt"
    torch.save(m.state_dict(), p)
    loaded = engine.load(p, dtype=torch.float64)
    assert loaded.config == direct.config and loaded.config.layers is not None
    assert "differ" in loaded.info()["notes"]
    for model in (direct, loaded):
        t = engine.run(model, ids[0].numpy())
        np.testing.assert_allclose(t["layers.0.h"], y1[0].numpy(), atol=TORCH_TOL)
        np.testing.assert_allclose(t["layers.1.h"], y2[0].numpy(), atol=TORCH_TOL)
        np.testing.assert_allclose(t["logits"], logits[0].numpy(), atol=TORCH_TOL)
        assert t["layers.0.c"].shape == (7, 16) and t["layers.1.gate_z"].shape == (7, 4)


def test_explicit_config_expresses_a_heterogeneous_stack(tmp_path):
    """The JSON form (docs in engine.models.stack_config): a layers list and a key_map."""
    torch.manual_seed(4)
    m = TwoModules().double()
    state = {f"enc.{k}": v for k, v in m.state_dict().items()}  # names no inference would need
    p = tmp_path / "two.pt"
    torch.save(state, p)
    layers = [{"cell": "lstm", "input_size": 6, "hidden_size": 8, "bidirectional": True},
              {"cell": "gru", "input_size": 16, "hidden_size": 4}]
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps({"layers": layers, "vocab_size": 20, "output_size": 3}))
    model = engine.load(p, config=str(cfg_file), dtype=torch.float64)
    ids = np.array([3, 1, 4, 1, 5])
    with torch.no_grad():
        want = m.fc(m.core(torch.tensor(ids)[None])[1])[0].numpy()
    np.testing.assert_allclose(engine.run(model, ids)["logits"], want, atol=TORCH_TOL)
    # the JSON a model writes reads back as the same config
    again = StackConfig.from_dict(json.loads(model.config.to_json()))
    assert again == model.config
    # a uniform stack keeps its old JSON (no layers entry)
    assert "layers" not in json.loads(from_torch(nn.GRU(3, 4, 2)).config.to_json())


@pytest.mark.parametrize("bad, words", [
    ([{"cell": "lstm", "input_size": 6, "hidden_size": 8}, {"cell": "gru", "input_size": 9, "hidden_size": 4}],
     "layers[1] reads 9 features but layers[0] gives 8"),
    ([{"cell": "lstm", "input_size": 6, "hidden_size": 8, "merge_mode": "sum"}], "has one direction"),
    ([{"cell": "lstm", "input_size": 6, "hidden_size": 8, "bidirectional": True, "reversed": True}],
     "already reads the sequence both ways"),
    ([{"cell": "lstm", "input_size": 6, "hidden_size": 8, "bidirectional": True, "merge_mode": None}],
     "merge_mode"),
    ([{"cell": "lstm", "input_size": 6, "hidden_size": 8, "units": 3}], "unknown fields ['units']"),
    ([{"cell": "rnn_tanh", "input_size": 6, "hidden_size": 8, "reset_after": False}], "GRU only"),
    ([], "at least one recurrent layer"),
])
def test_bad_layer_lists_are_refused_in_words(tmp_path, bad, words):
    with pytest.raises(ValueError) as info:
        StackConfig.from_dict({"layers": bad})
    assert words in str(info.value)
    torch.save(TwoModules().state_dict(), tmp_path / "m.pt")
    with pytest.raises(LoadError, match="config"):
        engine.load(tmp_path / "m.pt", config={"layers": bad})


def test_uniform_fields_that_contradict_the_layers_are_refused():
    with pytest.raises(ValueError, match="layers\\[0\\] says"):
        StackConfig.from_dict({"cell": "gru", "layers": [{"cell": "lstm", "input_size": 2, "hidden_size": 3}]})


# -- probes, interventions, the prefix cache ----------------------------------------------------


def mixed_stack(seed=5, dtype=torch.float64):
    """LSTM 6 → GRU 4 → RNN 5 → Linear 3 (one direction: the prefix cache applies)."""
    torch.manual_seed(seed)
    mods = [nn.LSTM(3, 6), nn.GRU(6, 4), nn.RNN(4, 5)]
    head = nn.Linear(5, 3)
    for mod in mods + [head]:
        mod.to(dtype)
    return from_torch(mods, head=head), mods, head


def gru_step(gru, x, h):
    """torch's GRU equations for one step (the reference an edit is spliced into)."""
    gi = x @ gru.weight_ih_l0.T + gru.bias_ih_l0
    gh = h @ gru.weight_hh_l0.T + gru.bias_hh_l0
    r = torch.sigmoid(gi[:4] + gh[:4])
    z = torch.sigmoid(gi[4:8] + gh[4:8])
    n = torch.tanh(gi[8:] + r * gh[8:])
    return r, z, n


def test_every_probe_and_an_edit_inside_the_middle_layer_match_a_torch_reference():
    model, (lstm, gru, rnn), head = mixed_stack()
    x = torch.randn(10, 3, dtype=torch.float64)
    iv = Intervention("layers.1.gate_z", "set", 0.9, positions=[4], units=[2])
    t = engine.run(model, x.numpy(), interventions=[iv])
    assert set(t.probes) == {"layers.0.h", "layers.0.c", "layers.0.gate_i", "layers.0.gate_f", "layers.0.gate_g",
                             "layers.0.gate_o", "layers.1.h", "layers.1.gate_r", "layers.1.gate_z",
                             "layers.1.gate_n", "layers.2.h", "layers.2.pre", "logits"}
    with torch.no_grad():
        y0, _ = lstm(x[:, None])
        h = torch.zeros(4, dtype=torch.float64)
        ys = []
        for step in range(10):
            r, z, n = gru_step(gru, y0[step, 0], h)
            if step == 4:
                z = z.clone()
                z[2] = 0.9
            h = (1 - z) * n + z * h
            ys.append(h)
        y1 = torch.stack(ys)
        y2, _ = rnn(y1[:, None])
        logits = head(y2[:, 0])
    np.testing.assert_allclose(t["layers.0.h"], y0[:, 0].numpy(), atol=TORCH_TOL)
    np.testing.assert_allclose(t["layers.1.h"], y1.numpy(), atol=TORCH_TOL)
    assert t["layers.1.gate_z"][4, 2] == 0.9
    np.testing.assert_allclose(t["layers.2.h"], y2[:, 0].numpy(), atol=TORCH_TOL)
    np.testing.assert_allclose(t["logits"], logits.numpy(), atol=TORCH_TOL)


@pytest.mark.parametrize("probe, t_edit", [("layers.0.c", 13), ("layers.1.h", 16), ("layers.2.pre", 30)])
def test_prefix_cache_reruns_on_a_mixed_stack_equal_full_runs(probe, t_edit):
    model, _, _ = mixed_stack(dtype=torch.float32)
    x = np.random.default_rng(6).normal(size=(40, 3)).astype(np.float32)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=8)
    iv = Intervention(probe, "add", 0.4, positions=Span(t_edit), units=[1])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=8)
    assert cache.last_start > 0  # it did resume
    full = engine.run(model, x, interventions=[iv], chunk=8)
    for name in full.probes:
        np.testing.assert_array_equal(cached[name], full[name], err_msg=name)


def test_a_stack_with_a_backward_direction_reruns_from_the_start_and_matches():
    torch.manual_seed(7)
    model = from_torch([nn.GRU(3, 4, bidirectional=True), nn.LSTM(8, 2)], head=nn.Linear(2, 2))
    x = np.random.default_rng(7).normal(size=(20, 3)).astype(np.float32)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=8)
    iv = Intervention("layers.0.h", "set", 0.0, positions=[15], units=[5])  # a backward unit
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=8)
    assert cache.last_start == 0
    full = engine.run(model, x, interventions=[iv], chunk=8)
    for name in full.probes:
        np.testing.assert_array_equal(cached[name], full[name], err_msg=name)
    # the backward unit set at step 15 changes the backward states before it, never after
    clean = engine.run(model, x, chunk=8)
    back = full["layers.0.h"][:, 4:] - clean["layers.0.h"][:, 4:]
    assert np.abs(back[:15]).max() > 0 and np.abs(back[16:]).max() == 0
    assert np.abs(full["layers.0.h"][:, :4] - clean["layers.0.h"][:, :4]).max() == 0


def test_an_edit_of_a_merged_output_reaches_only_the_layers_above():
    """layers.0.merged (merge_mode sum): an edit at step 3 changes what layer 1 reads there."""
    torch.manual_seed(8)
    bi, top = nn.LSTM(3, 4, bidirectional=True).double(), nn.GRU(4, 2).double()
    cfg = StackConfig.from_layers([LayerSpec("lstm", 3, 4, bidirectional=True, merge_mode="sum"),
                                   LayerSpec("gru", 4, 2)])
    w = {f"rnn.{k}": v for k, v in bi.state_dict().items()}
    w.update({f"rnn.{k.replace('_l0', '_l1')}": v for k, v in top.state_dict().items()})
    model = RecurrentStack(cfg, w, dtype=torch.float64)
    x = torch.randn(8, 3, dtype=torch.float64)
    iv = Intervention("layers.0.merged", "scale", 0.0, positions=[3])
    t = engine.run(model, x.numpy(), interventions=[iv])
    with torch.no_grad():
        y, _ = bi(x[:, None])
        merged = y[:, 0, :4] + y[:, 0, 4:]
        clean_h = y[:, 0].numpy()
        merged[3] = 0
        y1, _ = top(merged[:, None])
    np.testing.assert_allclose(t["layers.0.h"], clean_h, atol=TORCH_TOL)
    np.testing.assert_allclose(t["layers.0.merged"], merged.numpy(), atol=TORCH_TOL)
    np.testing.assert_allclose(t["layers.1.h"], y1[:, 0].numpy(), atol=TORCH_TOL)


# -- heads that are not one linear layer ----------------------------------------------------------


class MLPHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 7), nn.Linear(7, 3)

    def forward(self, y):
        return self.fc2(torch.relu(self.fc1(y)))


class AttentionPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.out = nn.Linear(4, 3)


class ConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 3)


@pytest.mark.parametrize("head", [MLPHead, AttentionPool, ConvHead])
def test_a_head_that_is_not_one_linear_layer_loads_the_core_without_logits(tmp_path, head):
    torch.manual_seed(9)
    m = TwoModules(head()).double()
    p = tmp_path / "m.pt"
    torch.save(m.state_dict(), p)
    model = engine.load(p, dtype=torch.float64)  # strict: the head's tensors are accounted for
    assert model.head_weight is None and "logits" not in [s.name for s in model.probe_specs()]
    notes = model.info()["notes"]
    assert "not one linear layer" in notes and "records no logits" in notes and "fc." in notes
    ids = np.array([4, 2, 9])
    t = engine.run(model, ids)
    assert "logits" not in t.probes
    with torch.no_grad():
        np.testing.assert_allclose(t["layers.1.h"], m.core(torch.tensor(ids)[None])[1][0].numpy(), atol=TORCH_TOL)
    from engine.cli import describe_model
    assert "not one linear layer" in describe_model(model)


def test_seqscope_info_lists_each_layer_of_a_mixed_stack(tmp_path):
    from engine.cli import describe_model

    torch.manual_seed(10)
    m = TwoModules()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    text = describe_model(engine.load(tmp_path / "m.pt"))
    assert "layers of different kinds" in text
    assert "0: bidirectional lstm 8+8 (concat), reads 6" in text and "1: gru 4, reads 16" in text
