"""Initial and final states of the chunked families (HGRN, LRU, minGRU/minLSTM, Mamba, Mamba2,
GLA, DeltaNet and Gated DeltaNet, RWKV-4, RWKV-7, xLSTM; not RetNet nor RecurrentGemma, whose
rotary positions count from a run's start): a run continues from the final state of its prefix,
a run from a given state matches each family's float64 reference loop started from it, every
sequence of a batch ends in its own state, bad states are refused in one sentence, trace files
keep states of several dimensions, and the prefix cache reuses a run only from the same state
and then equals a fresh run bit for bit."""
import tempfile

import numpy as np
import pytest
import torch

import engine
from engine import InputError, Intervention, PrefixCache, Span
from engine.initial_state_files import InitialStateError, initial_state_for, read_initial_state
from deltanet_reference import reference_deltanet
from engine.models.rwkv7_loading import load_rwkv7
from family_checks import assert_traces_equal, token_ids as ids
from test_deltanet_golden import build as build_deltanet
from hgrn_reference import reference as hgrn_reference
from lru_reference import reference as lru_reference
from mamba_reference import float64_weights, reference_mamba
from rwkv7_reference import random_state_dict, reference_rwkv7
from test_hgrn import make as make_hgrn
from test_lru import make as make_lru
from test_mingru import make as make_mingru, reference as mingru_reference

transformers = pytest.importorskip("transformers")
from test_mamba_golden import hf_model, ours  # noqa: E402
from test_xlstm_golden import hf_model as xlstm_hf, ours as xlstm_ours, ref_kwargs as xlstm_kwargs  # noqa: E402
from xlstm_reference import reference_xlstm  # noqa: E402
from rwkv_reference import reference_rwkv  # noqa: E402
from gla_reference import reference_lm as gla_reference  # noqa: E402
from test_gla_golden import build as build_gla  # noqa: E402
from test_rwkv_golden import hf_model as rwkv_hf, ours as rwkv_ours  # noqa: E402
from test_mamba2_golden import hf_model as mamba2_hf, ours as mamba2_ours, reference as mamba2_reference  # noqa: E402

FAMILIES = ["lru", "hgrn-conv", "mingru-conv", "minlstm", "mamba", "mamba2", "deltanet", "gated-deltanet", "rwkv7",
            "xlstm", "rwkv", "gla", "gla-conv"]
TOL64 = 1e-10  # float64 throughout: only the order of additions differs


def build(family, dtype=torch.float64, scan="torch"):
    """(model, vocabulary size, reference(ids, state of one sequence) -> {probe: [T, ...]})."""
    if family.startswith("gla"):
        kw = dict(d=32, heads=4, kv_heads=2, use_short_conv=True, conv_size=3) if family == "gla-conv" else {}
        with tempfile.TemporaryDirectory() as folder:
            model, sd, cfg = build_gla("gla", 4, dtype, folder, **kw)
        w = float64_weights(sd)
        return model, 37, lambda x, s: gla_reference(w, cfg, x, state0={k: s[f"layers.{k}.state"] for k in range(2)},
                                                     conv0={k: {m: s[f"layers.{k}.conv_window_{m}"] for m in "qkv"}
                                                            for k in range(2) if f"layers.{k}.conv_window_q" in s})
    if family == "rwkv":
        hf = rwkv_hf(7, d=16, layers=2, att=12, ffn=24, layer_norm_epsilon=1e-4)
        w = float64_weights(hf.state_dict())
        return rwkv_ours(hf, scan, dtype), 37, lambda x, s: reference_rwkv(w, x, 2, eps=1e-4, state0={
            k: tuple(s[f"layers.{k}.{p}"] for p in ("state", "last_att_in", "last_ffn_in")) for k in range(2)})
    if family == "xlstm":
        hf = xlstm_hf(7, d=32, layers=2, heads=2, use_bias=True)
        w = float64_weights(hf.state_dict())
        return xlstm_ours(hf, dtype), 37, lambda x, s: reference_xlstm(w, x, 2, **xlstm_kwargs(hf), state0={
            k: tuple(s[f"layers.{k}.{p}"] for p in ("state", "normalizer", "m")) for k in range(2)})
    if family == "rwkv7":
        sd = random_state_dict(2, vocab=37, C=24, heads=3, layers=2, ffn=40, dtype=torch.float64)
        w = float64_weights(sd)
        return load_rwkv7(sd, [], name="test", fmt="pth", dtype=dtype, device="cpu"), 37, lambda x, s: reference_rwkv7(
            w, x, state0={k: tuple(s[f"layers.{k}.{p}"] for p in ("state", "last_in", "last_ffn_in")) for k in range(2)})
    if family.endswith("deltanet"):
        gated = family == "gated-deltanet"
        cfg = {"num_v_heads": 4, "expand_v": 1.0} if gated else {"use_gate": True, "conv_size": 3}
        with tempfile.TemporaryDirectory() as folder:  # the model is read into memory
            model, config, w = build_deltanet(folder, 3, dtype, True, gated=gated, **cfg)
        parts = ("state", "conv_window_q", "conv_window_k", "conv_window_v")
        return model, 29, lambda x, s: reference_deltanet(w, config, x, conv_bias=True, state0={
            k: (s[f"layers.{k}.state"], tuple(s[f"layers.{k}.{p}"] for p in parts[1:])) for k in range(2)})
    if family == "lru":
        model, w, cfg = make_lru(dtype=dtype)
        return model, 23, lambda x, s: lru_reference(w, x, cfg, state0={
            k: s[f"layers.{k}.state"][:, 0] + 1j * s[f"layers.{k}.state"][:, 1] for k in range(cfg.n_layer)})
    if family == "hgrn-conv":
        model, w, cfg = make_hgrn(d=8, conv=4, dtype=dtype)
        return model, 23, lambda x, s: hgrn_reference(w, x, cfg, state0={
            k: tuple(s[f"layers.{k}.{p}"] for p in ("state", "conv_window_i", "conv_window_f"))
            for k in range(cfg.n_layer)})
    if family in ("mingru-conv", "minlstm"):
        cell, conv = ("mingru", 3) if family == "mingru-conv" else ("minlstm", 0)
        model, w, cfg = make_mingru(cell, conv=conv, dtype=dtype, scan=scan)
        empty = np.zeros((0, cfg.d_model))
        return model, 23, lambda x, s: mingru_reference(w, x, cfg, state0={
            k: (s[f"layers.{k}.h"], s.get(f"layers.{k}.conv_window", empty)) for k in range(cfg.n_layer)})
    if family == "mamba2":
        hf = mamba2_hf(2, d=16, N=4, layers=2, heads=8, head_dim=4, groups=2, chunk_size=5)
        return mamba2_ours(hf, dtype), 37, lambda x, s: mamba2_reference(hf, x, state0={
            k: (s[f"layers.{k}.state"].reshape(8, 4, 4), s[f"layers.{k}.conv_window"]) for k in range(2)})
    hf = hf_model(6, d=16, N=4, layers=2, use_bias=True)
    w = float64_weights(hf.state_dict())
    return ours(hf, scan, dtype), 37, lambda x, s: reference_mamba(w, x, 2, state0={
        k: (s[f"layers.{k}.state"], s[f"layers.{k}.conv_window"]) for k in range(2)})


def random_state(model, n, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, scale, (n,) + shape) for name, shape in model.state_shapes().items()}


def assert_states_equal(a, b, tol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=tol, rtol=tol, err_msg=name)


def probes_but_attn(trace):
    return [n for n in trace.probes if not n.endswith(".attn")]


def test_the_state_names_and_shapes_are_documented_per_family():
    lru, _, _ = build("lru")
    assert lru.state_shapes() == {"layers.0.state": (10, 2), "layers.1.state": (10, 2)}
    hgrn, _, _ = build("hgrn-conv")
    assert hgrn.state_shapes()["layers.1.conv_window_f"] == (3, 8)
    assert build("minlstm")[0].state_shapes() == {"layers.0.h": (18,), "layers.1.h": (18,)}
    assert build("mingru-conv")[0].state_shapes()["layers.0.conv_window"] == (2, 12)
    mamba, _, _ = build("mamba")
    assert mamba.state_shapes() == {"layers.0.state": (32, 4), "layers.0.conv_window": (3, 32),
                                    "layers.1.state": (32, 4), "layers.1.conv_window": (3, 32)}
    for model in (lru, hgrn, mamba):  # the state is the state probe, as the model describes it
        specs = {s.name: s for s in model.probe_specs()}
        assert specs["layers.0.state"].shape == model.state_shapes()["layers.0.state"]


# -- (a) continuation ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_continues_from_the_final_state_of_its_prefix(family):
    model, vocab, _ = build(family)
    x = ids(45, vocab=vocab)
    full = engine.run(model, x, chunk=16)
    for t in (1, 16, 21):
        head = engine.run(model, x[:t], chunk=16)
        tail = engine.run(model, x[t:], chunk=16, initial_state=engine.final_state(head))
        assert_states_equal(tail.initial_state, head.final_state)
        for name in probes_but_attn(tail):
            np.testing.assert_allclose(tail[name], full[name][t:], atol=TOL64, rtol=TOL64, err_msg=f"{name} t={t}")
        assert_states_equal(tail.final_state, full.final_state, TOL64)


@pytest.mark.parametrize("scan", ["torch", "numba"])
def test_float32_mamba_continues_within_float32_rounding(scan):
    model, vocab, _ = build("mamba", torch.float32, scan)
    x = ids(40, vocab=vocab)
    full = engine.run(model, x, chunk=16)
    tail = engine.run(model, x[19:], chunk=16, initial_state=engine.run(model, x[:19], chunk=16))
    for name in probes_but_attn(tail):  # float32: a few units in the last place of values of order 1..10
        np.testing.assert_allclose(tail[name], full[name][19:], atol=2e-5, rtol=2e-5, err_msg=name)
    assert tail.final_state["layers.1.state"].dtype == np.float32


# -- (b) against the float64 references ---------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_from_a_given_state_matches_the_float64_reference(family):
    model, vocab, reference = build(family)
    state = random_state(model, 1, seed=3)
    x = ids(30, seed=3, vocab=vocab)
    trace = engine.run(model, x, chunk=8, initial_state=state)
    expected = reference(x, {n: a[0] for n, a in state.items()})
    assert set(expected) == set(probes_but_attn(trace))
    for name, want in expected.items():
        np.testing.assert_allclose(trace[name], want, atol=TOL64, rtol=1e-9, err_msg=name)
    assert_states_equal(trace.initial_state, state)
    for name, last in trace.final_state.items():  # the state probes' last step; Mamba's window: its last inputs
        if name.endswith((".state", ".h")):
            np.testing.assert_allclose(last[0], expected[name][-1], atol=TOL64, rtol=1e-9, err_msg=name)
        elif family == "mamba":
            np.testing.assert_allclose(last[0], expected[name.replace("conv_window", "in")][-3:], atol=TOL64)
    if family == "mamba2":  # a state of heads x head_dim x d_state, shown as [d_inner, d_state]
        assert model.state_shapes()["layers.0.state"] == (32, 4)


# -- (c) sequences of different lengths ---------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_sequence_of_a_batch_ends_in_its_own_state(family):
    model, vocab, _ = build(family)
    lengths = (30, 7, 16, 1, 23)
    xs = [ids(L, seed=L, vocab=vocab) for L in lengths]
    state = random_state(model, len(xs), seed=1)
    batch = engine.run(model, xs, chunk=8, initial_state=state)
    for b, x in enumerate(xs):
        alone = engine.run(model, x, chunk=8, initial_state={n: a[b] for n, a in state.items()})
        assert_states_equal({n: a[b:b + 1] for n, a in batch.final_state.items()}, alone.final_state, 1e-12)
        for name in probes_but_attn(alone):
            np.testing.assert_allclose(batch.array(name, b), alone[name], atol=1e-12, rtol=1e-12, err_msg=name)


# -- (d) refusals --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mamba():
    return build("mamba")[0]


@pytest.mark.parametrize("change, words", [
    ({"layers.0.h": np.zeros(32)}, "initial_state names layers.0.h, which this model's state does not have; its "
                                   "state is layers.0.state [32, 4], layers.0.conv_window [3, 32], layers.1.state"),
    ({"layers.0.state": np.zeros((4, 32))}, "initial_state['layers.0.state'] has shape [4, 32]; it should be [32, 4] "
                                            "(the same state for every sequence) or [2, 32, 4] (one row for each"),
    ({"layers.1.conv_window": np.full((3, 32), np.nan)}, "initial_state['layers.1.conv_window'] holds NaN or infinity"),
    ({"layers.1.conv_window": None}, "gives layers.1.state but not layers.1.conv_window: a layer's state is all of "
                                     "layers.1.state, layers.1.conv_window"),
])
def test_bad_states_are_refused_in_one_sentence(mamba, change, words):
    state = {n: a[0] for n, a in random_state(mamba, 1).items()}
    state.update(change)
    state = {n: a for n, a in state.items() if a is not None}
    with pytest.raises(InputError) as info:
        engine.run(mamba, [ids(5), ids(3)], initial_state=state)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_flat_values_are_taken_as_a_project_file_keeps_them(mamba):
    state = random_state(mamba, 1, seed=4)
    flat = {n: a.reshape(-1).tolist() for n, a in state.items()}
    a = engine.run(mamba, ids(9), initial_state=state)
    b = engine.run(mamba, ids(9), initial_state=flat)
    assert_traces_equal(a, b)


def test_retnet_refuses_a_state_its_rotary_positions_could_not_go_on_from():
    with tempfile.TemporaryDirectory() as folder:
        model = build_gla("retnet", 1, torch.float64, folder)[0]
    with pytest.raises(InputError, match="this retnet model always starts from its zero state"):
        engine.run(model, [1, 2, 3], initial_state={"layers.0.state": np.zeros((8, 8))})


def test_families_without_an_initial_state_name_those_with_one():
    from stateless_model import stateless_model

    with pytest.raises(InputError) as info:
        engine.run(stateless_model(), [1, 2, 3], initial_state={"layers.0.state": np.zeros(4)})
    assert str(info.value).endswith("this recurrent_gemma model always starts from its zero state: initial states are "
                                    "for the classic LSTM/GRU/RNN stacks and the HGRN, LRU, minGRU/minLSTM, Mamba, "
                                    "Mamba2, GLA, (gated) DeltaNet, RWKV-4, RWKV-7 and xLSTM models")


# -- (e) files --------------------------------------------------------------------------------------
def test_trace_files_keep_states_of_several_dimensions(mamba, tmp_path):
    state = random_state(mamba, 2, seed=2)
    trace = engine.run(mamba, [ids(12), ids(5)], initial_state=state)
    path = engine.save_trace(trace, tmp_path / "run.h5")
    back = engine.load_trace(path)
    assert_states_equal(back.initial_state, trace.initial_state)
    assert_states_equal(back.final_state, trace.final_state)
    assert back.final_state["layers.0.state"].shape == (2, 32, 4)
    assert_states_equal(read_initial_state(path), trace.final_state)
    # the next run continues from the file, as from the trace itself
    xs = [ids(6, seed=9), ids(4, seed=8)]
    from_file = engine.run(mamba, xs, initial_state=initial_state_for(mamba, path, 2))
    assert_traces_equal(from_file, engine.run(mamba, xs, initial_state=trace))
    np.savez(tmp_path / "s.npz", **engine.final_state(trace))
    assert_states_equal(initial_state_for(mamba, tmp_path / "s.npz", 2), trace.final_state)
    with pytest.raises(InitialStateError, match="a step can be named only for the classic"):
        initial_state_for(mamba, path, 2, step=3)
    np.savez(tmp_path / "bad.npz", **{"layers.0.state": np.zeros((32, 3))})
    with pytest.raises(InitialStateError, match=r"bad.npz does not fit this model: .*it should be \[32, 4\]"):
        initial_state_for(mamba, tmp_path / "bad.npz", 2)


# -- (f) the prefix cache ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_reruns_from_a_state_equal_fresh_runs(family):
    model, vocab, _ = build(family)
    xs = [ids(40, vocab=vocab), ids(13, seed=1, vocab=vocab)]
    state = random_state(model, 2)
    cache = PrefixCache()
    engine.run(model, xs, cache=cache, chunk=8, initial_state=state)
    iv = Intervention("layers.0.out", "add", 0.5, positions=Span(20, 25), units=[1])
    cached = engine.run(model, xs, interventions=[iv], cache=cache, chunk=8, initial_state=state)
    assert cache.last_start == 16  # the short sequence ended before: its final state is the kept one
    fresh = engine.run(model, xs, interventions=[iv], chunk=8, initial_state=state)
    assert_traces_equal(cached, fresh)
    assert_states_equal(cached.final_state, fresh.final_state)
    other = random_state(model, 2, seed=5)  # another state: nothing is reused
    again = engine.run(model, xs, interventions=[iv], cache=cache, chunk=8, initial_state=other)
    assert cache.last_start == 0
    assert_traces_equal(again, engine.run(model, xs, interventions=[iv], chunk=8, initial_state=other))
    name = next(iter(state))
    assert not np.array_equal(again.final_state[name], fresh.final_state[name])


@pytest.mark.parametrize("family", ["hgrn-conv", "mamba"])
def test_typing_and_cutting_with_the_cache_keeps_every_final_state_exact(family):
    model, vocab, _ = build(family)
    state = random_state(model, 2, seed=6)
    rng = np.random.default_rng(3)
    xs = [ids(37, vocab=vocab), ids(20, seed=2, vocab=vocab)]
    cache = PrefixCache()
    for step in range(8):
        b = step % 2
        if step % 3 == 2:
            xs[b] = xs[b][: len(xs[b]) - int(rng.integers(1, 9))]
        else:
            xs[b] = np.concatenate([xs[b], rng.integers(0, vocab, int(rng.integers(1, 12)))])
        ivs = [Intervention("layers.1.out", "add", 0.3, positions=Span(int(rng.integers(1, 15))), units=[2])]
        cached = engine.run(model, xs, interventions=ivs, cache=cache, chunk=8, initial_state=state)
        fresh = engine.run(model, xs, interventions=ivs, chunk=8, initial_state=state)
        assert_traces_equal(cached, fresh)
        assert_states_equal(cached.final_state, fresh.final_state)


def test_seqscope_trace_continues_a_mamba_run_from_its_trace_file(capsys, tmp_path):
    from pathlib import Path

    from engine.cli import main

    ssm = str(Path(__file__).resolve().parents[1] / "assets" / "models" / "selective-ssm-recall")
    enc, dec = str(tmp_path / "enc.h5"), str(tmp_path / "dec.h5")
    assert main(["trace", ssm, "--text", "abcab", "-o", enc]) == 0
    assert main(["trace", ssm, "--text", "cab", "--initial-state", enc, "-o", dec]) == 0
    model = engine.load(ssm)
    want = engine.run(model, "cab", initial_state=engine.run(model, "abcab"))
    got = engine.load_trace(dec)
    assert_states_equal(got.initial_state, engine.load_trace(enc).final_state)
    assert_states_equal(got.final_state, want.final_state, 1e-6)  # float32, the same computation
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-6, rtol=1e-6)
    capsys.readouterr()
    assert main(["trace", ssm, "--text", "cab", "--initial-state", enc + ":2", "-o", dec]) == 2
    assert "a step can be named only for the classic LSTM/GRU/RNN stacks" in capsys.readouterr().err


def test_implicit_attention_says_it_leaves_out_the_initial_state():
    model, vocab, _ = build("lru")
    model.attention_window = ((0, 8), (0, 8))
    x = ids(8, vocab=vocab)
    state = random_state(model, 1)
    assert not engine.run(model, x).notes
    assert not engine.run(model, x, initial_state={n: 0 * a for n, a in state.items()}).notes
    assert engine.run(model, x, probes="layers.*.out", initial_state=state).notes == ()
    noted = engine.run(model, x, initial_state=state)
    assert any("the implicit attention (attn) weighs this run's inputs only" in n for n in noted.notes)
    # what the note says: from the state, y differs from the sum of attn's contributions plus D u by C lambda^(t+1) s0
    zero = engine.run(model, x)
    assert np.abs(noted["layers.0.y"] - zero["layers.0.y"]).max() > 1e-3
    np.testing.assert_allclose(noted["layers.0.attn"], zero["layers.0.attn"], atol=1e-12)
