"""The cell variants Keras (and hand-written torch cells) use: the GRU with its reset gate before
the recurrent matmul (``reset_after=False``), the two hard sigmoids and any activation of
``engine.models.activations``, for LSTM, GRU and Elman cells.

- golden: every probe vs the float64 step loop of tests/reference.py, within 1e-10 (float64
  models) and 1e-5 (float32), for every combination; and vs Keras 3's own layers (float64, with
  Keras's float64-to-float32 matmul demotion turned off; see ``keras`` below) within 1e-10;
- never torch's fused kernel nor the compiled LSTM stretch, which compute only the standard
  cells; and a variant run as torch's cell gives very different numbers;
- interventions: causality at every site, every op at every site vs the reference stepped with
  the same edit; the prefix cache: re-runs equal full runs bit for bit;
- config: saved and loaded back, shown in info(), unknown activations refused by name.
"""
import itertools
import os

import numpy as np
import pytest
import torch
from torch import nn

import engine
import engine.loading
from engine import Intervention, LoadError, PrefixCache, Span
from engine.cli import describe_model
from engine.models import lstm_stretch
from engine.models.activations import ACTIVATIONS
from engine.models.stack import RecurrentStack, StackConfig, from_torch
from family_checks import assert_edit_sessions_match_full_runs, assert_traces_equal, assert_typing_reuses_the_prefix
from reference import ACTIVATIONS as REFERENCE_ACTIVATIONS
from reference import float64_weights, reference_stack

# Keras 3.15's variables hand numpy an __array__ without the copy keyword (its own deprecation)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU}


def variant(cell, F=4, H=9, layers=2, dtype=torch.float64, seed=0, bidirectional=False, bias=True, proj=0,
            embed=None, head=False, **options):
    """A torch module with random weights (torch's init) and the SeqScope model running them as
    the variant ``options`` (activation, recurrent_activation, reset_after; an Elman cell
    ``rnn_<activation>``)."""
    torch.manual_seed(seed)
    kw = dict(bidirectional=bidirectional, bias=bias, **({"proj_size": proj} if proj else {}))
    rnn = MODULES.get(cell, nn.RNN)(F, H, layers, **kw).to(dtype)
    if cell.startswith("rnn_"):
        options["nonlinearity"] = cell[4:]
    out = (proj or H) * (2 if bidirectional else 1)
    emb = None if embed is None else nn.Embedding(embed, F).to(dtype)
    lin = nn.Linear(out, embed or 5).to(dtype) if head else None
    return rnn, from_torch(rnn, emb, lin, **options)


def reference_options(model):
    cfg = model.config
    out = {"reset_after": cfg.reset_after}
    if cfg.cell in ("lstm", "gru"):
        out.update(activation=cfg.cell_activation, recurrent_activation=cfg.gate_activation)
    return out


def assert_matches_reference(rnn, model, lengths, dtype, seed=1):
    cfg = model.config
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((L, cfg.input_size)).astype(np.float64 if dtype == torch.float64 else np.float32)
          for L in lengths]
    trace = engine.run(model, xs, chunk=8)
    w = float64_weights(rnn)
    tol = TOL[dtype]
    for s, x in enumerate(xs):
        ref = reference_stack(cfg.cell, w, x.astype(np.float64), cfg.num_layers, bidirectional=cfg.bidirectional,
                              **reference_options(model))
        assert set(ref) == set(trace.probes)
        for name, expected in ref.items():
            got = trace.array(name, s)
            assert got.dtype == x.dtype
            np.testing.assert_allclose(got, expected, atol=tol, rtol=tol, err_msg=name)
    return trace


# -- golden: the float64 step loop -----------------------------------------------------------
GATES = ("sigmoid", "hard_sigmoid", "hard_sigmoid_keras3")
GRU_CASES = [dict(reset_after=r, recurrent_activation=g, activation=a)
             for r, g, a in itertools.product((False, True), GATES, ("tanh", "relu", "softsign"))]
LSTM_CASES = [dict(recurrent_activation=g, activation=a) for g, a in itertools.product(GATES, ("tanh", "relu"))]
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def case_id(options):
    return "-".join(f"{'before' if v is False else 'after' if v is True else v}" for v in options.values())


@DTYPES
@pytest.mark.parametrize("options", GRU_CASES, ids=case_id)
def test_gru_variants_match_the_reference(options, dtype):
    rnn, model = variant("gru", dtype=dtype, **options)
    assert_matches_reference(rnn, model, [29, 11], dtype)


@DTYPES
@pytest.mark.parametrize("options", LSTM_CASES, ids=case_id)
def test_lstm_variants_match_the_reference(options, dtype):
    rnn, model = variant("lstm", dtype=dtype, **options)
    assert_matches_reference(rnn, model, [29, 11], dtype)


@DTYPES
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_elman_with_every_activation_matches_the_reference(act, dtype):
    rnn, model = variant(f"rnn_{act}", dtype=dtype)
    with torch.no_grad():  # small weights: exponential and linear stay bounded over 30 steps
        for p in rnn.parameters():
            p.mul_(0.5)
    model = from_torch(rnn, nonlinearity=act)
    assert model.architecture == f"rnn_{act}"
    assert_matches_reference(rnn, model, [30], dtype)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation_as_a_reset_before_gru_candidate_and_as_lstm_gates(act):
    rnn, model = variant("gru", reset_after=False, activation=act, recurrent_activation="hard_sigmoid", layers=1)
    assert_matches_reference(rnn, model, [25], torch.float64)
    if act in ("exponential", "linear", "relu", "elu", "selu", "softplus", "silu"):
        return  # not a gate: unbounded values make the LSTM cell state explode
    rnn, model = variant("lstm", recurrent_activation=act, activation="softsign", layers=1)
    assert_matches_reference(rnn, model, [25], torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell, options", [
    ("gru", dict(reset_after=False, recurrent_activation="hard_sigmoid", bidirectional=True)),
    ("gru", dict(reset_after=False, bias=False, layers=3)),
    ("lstm", dict(recurrent_activation="hard_sigmoid", proj=4, bidirectional=True)),
    ("lstm", dict(recurrent_activation="hard_sigmoid_keras3", bias=False, layers=3)),
    ("rnn_softsign", dict(bidirectional=True)),
], ids=lambda v: v if isinstance(v, str) else case_id(v))
def test_bidirectional_unbiased_and_projected_variants_match_the_reference(cell, options, dtype):
    rnn, model = variant(cell, dtype=dtype, **options)
    assert_matches_reference(rnn, model, [21, 9], dtype)


def test_the_activations_are_their_definitions():
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    for name, (fn, _) in ACTIVATIONS.items():
        np.testing.assert_allclose(fn(x).numpy(), REFERENCE_ACTIVATIONS[name](x.numpy()), atol=1e-15, rtol=1e-14,
                                   err_msg=name)
    hs2, hs3 = ACTIVATIONS["hard_sigmoid"][0], ACTIVATIONS["hard_sigmoid_keras3"][0]
    one = torch.tensor([-3.0, -1.0, 1.0, 2.5, 3.0], dtype=torch.float64)
    assert hs2(one).tolist() == pytest.approx([0.0, 0.3, 0.7, 1.0, 1.0])
    assert hs3(one).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 11 / 12, 1.0])


# -- exactness: the variant is computed, never approximated by torch's cell --------------------
VARIANTS = [("gru", dict(reset_after=False)), ("gru", dict(recurrent_activation="hard_sigmoid")),
            ("gru", dict(activation="relu")), ("lstm", dict(recurrent_activation="hard_sigmoid_keras3")),
            ("lstm", dict(activation="softsign")), ("rnn_linear", {})]
VARIANT_IDS = [f"{c}-{case_id(o) or 'linear'}" for c, o in VARIANTS]


@pytest.mark.parametrize("cell, options", VARIANTS, ids=VARIANT_IDS)
def test_a_variant_never_runs_torchs_fused_kernel_nor_the_compiled_stretch(cell, options, monkeypatch):
    _, model = variant(cell, dtype=torch.float32, **options)
    std_rnn, standard = variant(cell if not cell.startswith("rnn_") else "rnn_tanh", dtype=torch.float32)

    def refuse(*args, **kwargs):
        raise AssertionError("torch's fused kernel computes only the standard cell")

    for m in (model, standard):
        for layer in m.cells:
            for c in layer:
                monkeypatch.setattr(c.module, "forward", refuse)
    monkeypatch.setattr(lstm_stretch, "run", refuse)
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    engine.run(model, x, chunk=8)
    site = "layers.0.gate_f" if cell == "lstm" else "layers.0.h"
    engine.run(model, x, chunk=8, interventions=[Intervention(site, "scale", 0.5, positions=Span(10, 20))])
    with pytest.raises(AssertionError, match="standard cell"):  # the standard cell does use it
        engine.run(standard, x, chunk=8)


@pytest.mark.parametrize("options, other, least", [
    (dict(reset_after=False), {}, 0.1),
    (dict(recurrent_activation="hard_sigmoid"), {}, 0.1),
    (dict(recurrent_activation="hard_sigmoid"), dict(recurrent_activation="hard_sigmoid_keras3"), 0.05),
    (dict(reset_after=False, recurrent_activation="hard_sigmoid"), dict(recurrent_activation="hard_sigmoid"), 0.1),
], ids=["reset-before", "hard-sigmoid", "keras2-vs-keras3", "reset-before-vs-after"])
def test_a_variant_is_not_torchs_gru(options, other, least):
    """The same weights run as another cell give very different states: a loader can never
    substitute one for the other unnoticed."""
    rnn, model = variant("gru", H=16, layers=2, **options)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(3.0)  # trained weights are larger than torch's init
    model = from_torch(rnn, **options)
    x = np.random.default_rng(2).standard_normal((60, 4))
    ours = engine.run(model, x)["layers.1.h"]
    theirs = engine.run(from_torch(rnn, **other), x)["layers.1.h"]
    assert np.abs(ours - theirs).max() > least


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell, options", VARIANTS, ids=VARIANT_IDS)
def test_variants_on_cuda_match_the_reference_and_rerun_exactly(cell, options):
    """On a GPU the variant steps through its equations too (float64 within 1e-10), and a cached
    re-run after an edit equals a full run."""
    rnn, cpu = variant(cell, F=5, H=12, **options)
    model = from_torch(rnn, device="cuda", **({"nonlinearity": cell[4:]} if cell.startswith("rnn_") else options))
    assert model.device.type == "cuda"
    x = np.random.default_rng(0).standard_normal((150, 5))
    trace = engine.run(model, x, chunk=32)
    ref = reference_stack(cpu.config.cell, float64_weights(rnn), x, 2, **reference_options(cpu))
    for name, expected in ref.items():
        np.testing.assert_allclose(trace[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=32)
    iv = Intervention("layers.0.h", "add", 0.5, positions=Span(77), units=[3])
    assert_traces_equal(engine.run(model, x, interventions=[iv], cache=cache, chunk=32),
                        engine.run(model, x, interventions=[iv], chunk=32))


# -- interventions -------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, options", VARIANTS, ids=VARIANT_IDS)
def test_steps_before_an_edit_are_bit_identical_and_later_ones_change_at_every_site(cell, options):
    _, model = variant(cell, dtype=torch.float32, H=10, **options)
    x = np.random.default_rng(3).standard_normal((70, 4)).astype(np.float32)
    clean = engine.run(model, x, chunk=8)
    t = 27  # inside a chunk of 8
    for spec in model.probe_specs():
        if spec.layer != 0:
            continue
        edited = engine.run(model, x, chunk=8, interventions=[Intervention(spec.name, "add", 0.5, positions=Span(t))])
        for name in clean.probes:
            np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=f"{spec.name}: {name}")
        for name in ("layers.0.h", "layers.1.h"):
            assert np.abs(edited[name][t:] - clean[name][t:]).max() > 1e-4, f"{spec.name}: {name}"


def _override(op, value, units, source=None):
    def f(v, t):
        v = v.copy()
        if op == "zero":
            v[units] = 0.0
        elif op == "set":
            v[units] = value
        elif op == "add":
            v[units] += value
        elif op == "scale":
            v[units] *= value
        else:
            v[units] = source[t][units]
        return v
    return f


@pytest.mark.parametrize("cell, options", VARIANTS[:2] + VARIANTS[3:4] + VARIANTS[5:],
                         ids=VARIANT_IDS[:2] + VARIANT_IDS[3:4] + VARIANT_IDS[5:])
def test_every_op_at_every_site_matches_the_reference_stepped_with_the_edit(cell, options):
    rnn, model = variant(cell, H=6, layers=2, **options)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 4))
    source = engine.run(model, rng.standard_normal((30, 4)))  # another run, for patches
    w = float64_weights(rnn)
    units, steps = [1, 4], range(9, 13)  # steps 9..12 cross the chunk boundary at 10 (chunk 5)
    for spec in model.probe_specs():
        for op, value in (("zero", None), ("set", 0.7), ("add", -0.4), ("scale", 1.5), ("patch", None)):
            src = source[spec.name] if op == "patch" else None
            iv = Intervention(spec.name, op, src if op == "patch" else value, positions=Span(9, 13), units=units)
            tr = engine.run(model, x, interventions=[iv], chunk=5)
            f = _override(op, value, units, src)
            overrides = {(spec.name, t): (lambda v, t=t: f(v, t)) for t in steps}
            ref = reference_stack(model.config.cell, w, x, 2, overrides=overrides, **reference_options(model))
            for name, expected in ref.items():
                np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=f"{op} {spec.name}: {name}")


# -- the prefix cache ----------------------------------------------------------------------------
@pytest.mark.parametrize("cell, options", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("t", [37, 40, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_a_rerun_from_the_cache_equals_a_full_run(cell, options, t):
    _, model = variant(cell, F=5, H=12, dtype=torch.float32, embed=17, head=True, **options)
    x = np.random.default_rng(0).integers(0, 17, 100)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=8)
    site = model.probe_specs()[2].site  # a gate (or an Elman pre-activation)
    for probe in ("layers.0.h", f"layers.0.{site}"):
        iv = Intervention(probe, "add", 0.3, positions=Span(t), units=[2, 3])
        cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=8)
        assert cache.last_starts == [t, t]  # both layers restart exactly at the edited step
        assert_traces_equal(cached, engine.run(model, x, interventions=[iv], chunk=8))
        for name in clean.probes:
            np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)


@pytest.mark.parametrize("cell, options", VARIANTS[:1] + VARIANTS[3:4], ids=VARIANT_IDS[:1] + VARIANT_IDS[3:4])
def test_steering_and_typing_sessions_match_full_runs(cell, options):
    _, model = variant(cell, F=5, H=12, dtype=torch.float32, embed=17, head=True, **options)
    assert_edit_sessions_match_full_runs(model, 17, edits=12, window=None)
    assert_typing_reuses_the_prefix(model, vocab=17)


# -- the config --------------------------------------------------------------------------------
def test_the_variant_is_saved_loaded_and_shown(tmp_path):
    rnn, model = variant("gru", embed=11, head=True, dtype=torch.float32, reset_after=False,
                         recurrent_activation="hard_sigmoid", activation="softsign")
    path = engine.loading.save_model(model, tmp_path / "m.safetensors")
    again = engine.load(path)
    assert again.config == model.config and not again.config.reset_after
    assert again.config.recurrent_activation == "hard_sigmoid" and again.config.activation == "softsign"
    x = np.arange(40) % 11
    assert_traces_equal(engine.run(again, x), engine.run(model, x))
    info = again.info()
    assert "before the recurrent matmul" in info["cell"] and "clip(0.2 x + 0.5, 0, 1)" in info["cell"]
    text = describe_model(again)
    assert "reset_after=False" in text and "hard_sigmoid" in text
    specs = {s.name: s.description for s in again.probe_specs()}
    assert "W_hn (r_t h_(t-1))" in specs["layers.0.gate_n"] and "softsign" in specs["layers.0.gate_n"]
    assert "hard_sigmoid(W_ir" in specs["layers.0.gate_r"]
    elman = variant("rnn_linear", embed=11)[1]
    path = engine.loading.save_model(elman, tmp_path / "e.safetensors")
    assert engine.load(path).config.cell == "rnn_linear"


def test_standard_choices_are_stored_as_the_standard_cell():
    base = dict(num_layers=1, hidden_size=4, input_size=3)
    assert StackConfig("gru", activation="tanh", recurrent_activation="sigmoid", **base) == StackConfig("gru", **base)
    assert StackConfig("rnn_relu", activation="relu", **base) == StackConfig("rnn_relu", **base)
    rnn, model = variant("gru", reset_after=True, activation="tanh", recurrent_activation="sigmoid")
    assert all(c.standard for layer in model.cells for c in layer)
    assert "torch.nn.GRU equations" in model.info()["cell"]


@pytest.mark.parametrize("fields, message", [
    (dict(cell="gru", recurrent_activation="gelu"), "recurrent_activation 'gelu' is not an activation"),
    (dict(cell="lstm", activation="swish"), "activation 'swish' is not an activation"),
    (dict(cell="lstm", activation=3), "activation 3 is not an activation"),
])
def test_an_unknown_activation_is_refused_by_name(fields, message):
    with pytest.raises(LoadError, match=message):
        StackConfig(num_layers=1, hidden_size=4, input_size=3, **fields)


@pytest.mark.parametrize("fields, message", [
    (dict(cell="lstm", reset_after=False), "reset_after=False applies to GRU only"),
    (dict(cell="gru", reset_after="no"), "reset_after must be true or false"),
    (dict(cell="rnn_tanh", activation="linear"), "cell 'rnn_linear'"),
    (dict(cell="rnn_tanh", recurrent_activation="hard_sigmoid"), "an Elman RNN has none"),
])
def test_contradictory_options_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        StackConfig(num_layers=1, hidden_size=4, input_size=3, **fields)


def test_a_torch_state_dict_loads_as_a_variant_through_the_config(tmp_path):
    """A user who wrote the Keras GRU in torch, with nn.GRU's parameter names: the config says
    which equations the weights belong to; an unknown activation is one LoadError sentence."""
    rnn, model = variant("gru", layers=1, dtype=torch.float32, reset_after=False, recurrent_activation="hard_sigmoid")
    torch.save(rnn.state_dict(), tmp_path / "gru.pt")
    loaded = engine.load(tmp_path / "gru.pt", config={"reset_after": False, "recurrent_activation": "hard_sigmoid"})
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    assert_traces_equal(engine.run(loaded, x), engine.run(model, x))
    with pytest.raises(LoadError, match="'hard_sigmoid2' is not an activation"):
        engine.load(tmp_path / "gru.pt", config={"recurrent_activation": "hard_sigmoid2"})
    torch.save(nn.RNN(4, 6).state_dict(), tmp_path / "rnn.pt")
    linear = engine.load(tmp_path / "rnn.pt", config={"cell": "rnn_linear"})
    assert linear.config.cell == "rnn_linear" and "assumed" not in linear.info().get("notes", "")


# -- Keras 3 itself ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the torch backend, computing in float64.  Keras promotes float64 to float32 in
    its ops on every backend but TensorFlow (``BIT64_TO_BIT32_DTYPE``, to match JAX), so a float64
    layer quietly multiplies in float32 (errors ~1e-7); for the test that table keeps float64."""
    if "keras" not in __import__("sys").modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras was imported with another backend than torch")
    from keras.src.backend.common import dtypes

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
        yield keras


def _keras_to_seqscope(kind, weights, H, reset_after=True):
    """Canonical SeqScope weights from a Keras layer's (kernels input x units; GRU gates z, r, h
    become r, z, n; a single bias becomes bias_ih with a zero bias_hh)."""
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    order = np.arange(kernel.shape[1])
    if kind == "gru":
        order = np.concatenate([np.arange(H, 2 * H), np.arange(H), np.arange(2 * H, 3 * H)])
    out = {"rnn.weight_ih_l0": kernel[:, order].T, "rnn.weight_hh_l0": recurrent[:, order].T}
    if bias is not None:
        b_ih, b_hh = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros_like(bias))
        out.update({"rnn.bias_ih_l0": b_ih[order], "rnn.bias_hh_l0": b_hh[order]})
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


KERAS_CASES = [
    # layer, Keras options, SeqScope options
    ("gru", dict(reset_after=False, recurrent_activation="hard_sigmoid"),
     dict(reset_after=False, recurrent_activation="hard_sigmoid_keras3")),
    ("gru", dict(reset_after=True, recurrent_activation="hard_sigmoid"),
     dict(recurrent_activation="hard_sigmoid_keras3")),
    ("gru", dict(reset_after=False), dict(reset_after=False)),
    ("gru", dict(reset_after=False, use_bias=False, activation="relu"), dict(reset_after=False, activation="relu")),
    ("gru", dict(reset_after=True), {}),
    ("lstm", dict(recurrent_activation="hard_sigmoid"), dict(recurrent_activation="hard_sigmoid_keras3")),
    ("lstm", dict(activation="softsign"), dict(activation="softsign")),
    ("lstm", {}, {}),
    ("rnn", dict(activation="relu"), {}),
    ("rnn", dict(activation="linear"), {}),
    ("rnn", dict(activation="tanh"), {}),
]


@pytest.mark.parametrize("kind, keras_options, options", KERAS_CASES,
                         ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}" for k, o, _ in KERAS_CASES])
def test_every_step_matches_keras3(keras, kind, keras_options, options):
    F, H, T = 3, 6, 25
    rng = np.random.default_rng(5)
    layer_class = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}[kind]
    layer = layer_class(H, return_sequences=True, dtype="float64", **keras_options)
    layer.build((1, T, F))
    layer.set_weights([rng.normal(scale=0.6, size=w.shape) for w in layer.weights])
    x = rng.standard_normal((1, T, F))
    expected_h = np.asarray(layer(torch.from_numpy(x)).detach())[0]
    expected_c = None
    if kind == "lstm":  # the cell state of every step: Keras's own cell, stepped
        h = c = torch.zeros(1, H, dtype=torch.float64)
        cs = []
        for t in range(T):
            h, (h, c) = layer.cell(torch.from_numpy(x[:, t]), [h, c])
            cs.append(np.asarray(c.detach())[0])
        expected_c = np.stack(cs)
    cell = f"rnn_{keras_options['activation']}" if kind == "rnn" else kind
    cfg = StackConfig(cell, 1, H, F, bias=keras_options.get("use_bias", True), **options)
    weights = _keras_to_seqscope(kind, layer.get_weights(), H)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        model = RecurrentStack(cfg, weights, dtype=dtype)
        trace = engine.run(model, x[0].astype(np.float64 if dtype == torch.float64 else np.float32), chunk=8)
        np.testing.assert_allclose(trace["layers.0.h"], expected_h, atol=tol, rtol=tol)
        if expected_c is not None:
            np.testing.assert_allclose(trace["layers.0.c"], expected_c, atol=tol, rtol=tol)
    if "hard_sigmoid" in keras_options.get("recurrent_activation", ""):
        # Keras 3's hard_sigmoid is not Keras 2's: read with the other definition, far off
        other = RecurrentStack(StackConfig(cell, 1, H, F, **{**options, "recurrent_activation": "hard_sigmoid"}),
                               weights, dtype=torch.float64)
        assert np.abs(engine.run(other, x[0])["layers.0.h"] - expected_h).max() > 1e-2


def test_keras2_hard_sigmoid_matches_a_keras3_layer_given_that_function(keras):
    """Keras 2's hard sigmoid, clip(0.2 x + 0.5, 0, 1), handed to a Keras 3 GRU as a function."""
    F, H, T = 3, 5, 20
    rng = np.random.default_rng(6)
    keras2_hard_sigmoid = lambda v: keras.ops.clip(0.2 * v + 0.5, 0.0, 1.0)  # noqa: E731
    layer = keras.layers.GRU(H, return_sequences=True, dtype="float64", reset_after=False,
                             recurrent_activation=keras2_hard_sigmoid)
    layer.build((1, T, F))
    layer.set_weights([rng.normal(scale=0.6, size=w.shape) for w in layer.weights])
    x = rng.standard_normal((1, T, F))
    expected = np.asarray(layer(torch.from_numpy(x)).detach())[0]
    model = RecurrentStack(StackConfig("gru", 1, H, F, reset_after=False, recurrent_activation="hard_sigmoid"),
                           _keras_to_seqscope("gru", layer.get_weights(), H), dtype=torch.float64)
    np.testing.assert_allclose(engine.run(model, x[0])["layers.0.h"], expected, atol=1e-10, rtol=1e-10)
