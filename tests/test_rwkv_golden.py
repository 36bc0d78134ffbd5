"""Golden tests for RWKV-4: logits and per-layer outputs vs ``transformers``' ``RwkvForCausalLM``
(``rescale_every=0``: the exact model; see REFERENCES.md) on random tiny configs, every probe vs
an independent float64 loop (tests/rwkv_reference.py, the paper's unscaled sums), and the
implicit attention reproducing the WKV output.

Tolerances: vs transformers (float32 both) 2e-5 absolute + relative on the residual stream and
logits (the torch loop agrees to the bit in practice, the numba loop to ~1e-6); vs the float64
reference, float32 models within 2e-5 (5e-5 on the unbounded state numerator/denominator) and
float64 models within 1e-10; the attention identity in float64 within 1e-8 (it holds to
~1e-14).  Chunks are short so that sequences of up to 300 steps cross several chunk boundaries.
"""
import functools

import numpy as np
import pytest
import torch

import engine
from engine.models.rwkv import RwkvConfig, RwkvModel, canonical_weight_shapes, numba_available
from engine.models.rwkv_loading import from_transformers
from engine.models.rwkv_scan import wkv_attention, wkv_log_normaliser
from family_checks import (assert_only_the_window_is_computed, assert_outputs_match_transformers,
                           assert_probes_match_reference, assert_progress_and_cancel)
from rwkv_reference import float64_weights, reference_rwkv

transformers = pytest.importorskip("transformers")
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

SCANS = ["torch"] + (["numba"] if numba_available() else [])


def hf_model(seed=0, vocab=37, d=16, layers=2, att=None, ffn=None, **kw):
    """A random RwkvForCausalLM with livelier weights than the init (decays from slow to fast,
    random bonus and time-mix, O(1) embeddings, LayerNorm biases).  Built once per arguments:
    tests only read it (a forward with rescale_every > 0 would rescale it: build those fresh)."""
    if kw.get("rescale_every", 0):
        return _hf_model(seed, vocab, d, layers, att, ffn, tuple(sorted(kw.items())))
    return _hf_model_cached(seed, vocab, d, layers, att, ffn, tuple(sorted(kw.items())))


def _hf_model(seed, vocab, d, layers, att, ffn, kw):
    kw = dict(kw)
    torch.manual_seed(seed)
    kw.setdefault("rescale_every", 0)
    cfg = transformers.RwkvConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=max(layers, 2),
                                  attention_hidden_size=att, intermediate_size=ffn, context_length=1024, **kw)
    m = transformers.RwkvForCausalLM(cfg).eval()  # its init divides by layers - 1: build 2, keep 1
    if layers == 1:
        m.rwkv.blocks = m.rwkv.blocks[:1]
        m.config.num_hidden_layers = 1
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("time_decay"):
                p.uniform_(-3.0, 1.5)
            elif name.endswith("time_first"):
                p.normal_(0, 1)
            elif ".time_mix_" in name:
                p.uniform_(0, 1)
            elif name.endswith("embeddings.weight"):
                p.normal_(0, 1)
            elif name.endswith("ln_out.bias") or name.endswith(("ln1.bias", "ln2.bias", "pre_ln.bias")):
                p.normal_(0, 0.3)
    return m


_hf_model_cached = functools.lru_cache(maxsize=None)(_hf_model)


def ours(hf, scan="torch", dtype=torch.float32, **kw):
    return from_transformers(hf, scan=scan, dtype=dtype, **kw)


CASES = [
    # seed, vocab, hidden, layers, attention width, ffn width, extra config, lengths
    (0, 37, 16, 2, None, None, {}, [1]),
    (1, 37, 16, 2, None, None, {}, [300, 129, 64]),
    (2, 50, 24, 3, 12, 40, {"layer_norm_epsilon": 1e-3}, [97, 5]),
    (3, 20, 8, 1, 20, 8, {"tie_word_embeddings": True}, [150, 150]),
    (4, 30, 32, 2, None, None, {}, [41]),
]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"H{c[2]}-L{c[3]}-A{c[4]}-F{c[5]}-B{len(c[7])}-T{max(c[7])}")
def test_matches_transformers(case, scan):
    seed, vocab, d, layers, att, ffn, extra, lengths = case
    hf = hf_model(seed, vocab, d, layers, att, ffn, **extra)
    model = ours(hf, scan)
    assert model.config.tie_embeddings == bool(extra.get("tie_word_embeddings", False))
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, vocab, L) for L in lengths]
    trace = engine.run(model, seqs, probes=["logits", "layers.*.out"], chunk=32)
    assert_outputs_match_transformers(hf, trace, seqs, layers)


def test_batched_hf_run_matches_too():
    """A whole-sequence batch (the batch > 1 bug of transformers' RWKV is in one-token steps with a
    passed state, not here)."""
    hf = hf_model(5, layers=2)
    ids = np.random.default_rng(0).integers(0, 37, (3, 70))
    trace = engine.run(ours(hf, SCANS[-1]), list(ids), probes="logits", chunk=16)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), use_cache=False).logits
    for s in range(3):
        torch.testing.assert_close(torch.tensor(trace.array("logits", s)), ref[s], atol=2e-5, rtol=2e-5)


def test_transformers_rescaling_is_undone_and_differs_only_through_layernorm_eps():
    """With rescale_every > 0, eval() forward passes divide weights in place; from_transformers
    scales them back, and our unscaled model matches transformers' rescaled one closely."""
    hf = hf_model(6, layers=4, rescale_every=2)
    before = ours(hf).state_dict()
    ids = np.random.default_rng(1).integers(0, 37, 60)
    with torch.no_grad():
        ref = hf(torch.tensor(ids[None]), use_cache=False).logits[0]
    assert hf.rwkv.layers_are_rescaled
    after = ours(hf).state_dict()
    for name, t in before.items():
        torch.testing.assert_close(after[name], t, atol=0, rtol=1e-6, msg=name)
    got = torch.tensor(engine.run(ours(hf), ids, probes="logits")["logits"])
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_every_probe_matches_the_float64_reference(scan, dtype):
    hf = hf_model(7, d=16, layers=2, att=12, ffn=24, layer_norm_epsilon=1e-4)
    model = ours(hf, scan, dtype)
    w = float64_weights(hf.state_dict())
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 37, 75), rng.integers(0, 37, 23)]
    trace = engine.run(model, seqs, chunk=16)
    tol = 2e-5 if dtype == torch.float32 else 1e-10

    def tolerance(name, expected):  # (atol, rtol): 5 x looser for the state
        return (5 * tol,) * 2 if name.endswith(".state") else (tol, tol)

    assert_probes_match_reference(trace, seqs, lambda ids: reference_rwkv(w, ids, 2, eps=1e-4), dtype, tolerance)


def test_a_config_built_model_with_tied_head_matches_the_reference():
    torch.manual_seed(8)
    cfg = RwkvConfig(d_model=12, n_layer=2, vocab_size=19, d_att=10, d_ffn=30, tie_embeddings=True)
    w = {k: torch.randn(shape, dtype=torch.float64) * 0.5 for k, shape in canonical_weight_shapes(cfg).items()}
    assert "head.weight" not in w
    model = RwkvModel(cfg, w, dtype=torch.float64, scan=SCANS[-1])
    ids = np.random.default_rng(2).integers(0, 19, 50)
    trace = engine.run(model, ids, chunk=16)
    ref = reference_rwkv(float64_weights(w), ids, 2)
    for name, expected in ref.items():
        np.testing.assert_allclose(trace[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_probe_specs_describe_shapes_and_dims():
    model = ours(hf_model(9, d=16, layers=2, att=12, ffn=40))
    specs = {s.name: s for s in model.probe_specs()}
    assert specs["layers.0.state"].shape == (12, 3) and specs["layers.0.state"].dims == ("token", "unit", "state")
    for site, width in [("att_in", 16), ("r", 12), ("k", 12), ("v", 12), ("w", 12), ("u", 12), ("wkv", 12),
                        ("att", 16), ("ffn_in", 16), ("ffn_k", 40), ("ffn_r", 16), ("ffn", 16), ("out", 16)]:
        assert specs[f"layers.1.{site}"].shape == (width,), site
        assert specs[f"layers.1.{site}"].dims == ("token", "unit")
        assert len(specs[f"layers.1.{site}"].description) > 20
    assert specs["logits"].shape == (37,) and specs["embed"].shape == (16,)
    assert specs["layers.0.attn"].shape == (256,) and specs["layers.0.attn"].dims == ("token", "key")
    model.attention_window = ((10, 20), (5, 45))
    assert {s.name: s for s in model.probe_specs()}["layers.0.attn"].shape == (40,)


def test_state_is_computed_only_when_asked_for_and_w_u_are_the_layer_constants():
    model = ours(hf_model(10), SCANS[-1])
    ids = np.arange(40) % 37
    a = engine.run(model, ids, probes="layers.*.wkv", chunk=16)
    b = engine.run(model, ids, probes=["layers.*.wkv", "layers.*.state", "layers.*.w", "layers.*.u"], chunk=16)
    assert a.probes == ["layers.0.wkv", "layers.1.wkv"]
    np.testing.assert_array_equal(a["layers.1.wkv"], b["layers.1.wkv"])
    assert b["layers.0.state"].shape == (40, 16, 3)
    np.testing.assert_array_equal(b["layers.1.w"], np.broadcast_to(model.decay(1).numpy(), (40, 16)))
    np.testing.assert_array_equal(b["layers.1.u"], np.broadcast_to(model.bonus(1).numpy(), (40, 16)))
    assert np.all(b["layers.0.w"] < 0)


# -- implicit attention ------------------------------------------------------------------


def per_channel_attention(trace, layer, rows, cols, s=0):
    arr = lambda n: torch.tensor(trace.array(f"layers.{layer}.{n}", s))  # noqa: E731
    logz = wkv_log_normaliser(arr("state"), arr("u"), arr("k"))
    return wkv_attention(arr("w"), arr("u"), arr("k"), logz, rows, cols, reduce=None)


@pytest.mark.parametrize("T", [1, 17, 70])
def test_attention_reproduces_the_wkv_output_in_float64(T):
    hf = hf_model(11, d=16, layers=2, att=12)
    model = ours(hf, SCANS[-1], torch.float64)
    ids = np.random.default_rng(3).integers(0, 37, T)
    trace = engine.run(model, ids, chunk=16)
    for k in range(2):
        alpha = per_channel_attention(trace, k, (0, T), (0, T))
        assert alpha.dtype == torch.float64 and alpha.shape == (T, T, 12)
        assert torch.all(torch.triu(alpha.permute(2, 0, 1), diagonal=1) == 0)  # causal
        assert torch.all(alpha >= 0)
        torch.testing.assert_close(alpha.sum(1), torch.ones(T, 12, dtype=torch.float64), atol=1e-12, rtol=0)
        v = torch.tensor(trace[f"layers.{k}.v"])
        wkv = torch.einsum("ijc,jc->ic", alpha, v)
        torch.testing.assert_close(wkv, torch.tensor(trace[f"layers.{k}.wkv"]), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("rows,cols", [((0, 90), (0, 90)), ((50, 90), (20, 70)), ((60, 90), (0, 13)),
                                       ((5, 40), (30, 90)), ((33, 34), (0, 90))])
def test_any_window_equals_the_same_part_of_the_full_matrix(rows, cols):
    model = ours(hf_model(12, d=16, layers=1), dtype=torch.float64)
    ids = np.random.default_rng(4).integers(0, 37, 90)
    trace = engine.run(model, ids, probes="layers.0.*", chunk=32)
    full = per_channel_attention(trace, 0, (0, 90), (0, 90))
    part = per_channel_attention(trace, 0, rows, cols)
    torch.testing.assert_close(part, full[rows[0]:rows[1], cols[0]:cols[1]], atol=1e-13, rtol=1e-10)
    # entries written out from the definition, with the unscaled denominator
    w, u, k = (torch.tensor(trace[f"layers.0.{n}"]) for n in ("w", "u", "k"))

    def weight(i, j):
        return torch.exp(w[j + 1:i].sum(0) + k[j]) if j < i else torch.exp(u[i] + k[i])

    for i, j in [(rows[0], cols[0]), (rows[1] - 1, cols[0]), (rows[1] - 1, min(cols[1], rows[1]) - 1)]:
        expect = torch.zeros(16, dtype=torch.float64)
        if j <= i:
            expect = weight(i, j) / sum(weight(i, m) for m in range(i + 1))
        torch.testing.assert_close(part[i - rows[0], j - cols[0]], expect, atol=1e-13, rtol=1e-10)


def test_attn_probe_is_the_documented_reduction_over_the_window():
    model = ours(hf_model(13, d=16, layers=2), SCANS[-1])
    model.attention_window = ((20, 60), (10, 50))
    seqs = [np.random.default_rng(5).integers(0, 37, 80), np.random.default_rng(6).integers(0, 37, 45)]
    trace = engine.run(model, seqs, chunk=16)
    for s, L in enumerate([80, 45]):
        att = trace.array("layers.1.attn", s)
        assert att.shape == (L, 40)
        assert np.all(np.isnan(att[:20])) and np.all(np.isnan(att[60:]))
        hi = min(60, L)
        alpha = per_channel_attention(trace, 1, (20, hi), (10, 50), s)
        np.testing.assert_allclose(att[20:hi], alpha.mean(-1).numpy(), atol=1e-6, rtol=1e-5)
        assert np.all(att[20:hi][np.triu_indices(hi - 20, k=11, m=40)] == 0)  # key j > row i


def test_a_long_input_never_costs_t_squared():
    """Only the window is computed: 3000 steps, a 16 x 16 window."""
    assert_only_the_window_is_computed(ours(hf_model(14, d=16, layers=1), SCANS[-1]), 3000)


def test_progress_cancel_and_half_precision():
    hf = hf_model(15, layers=2)
    model = ours(hf)
    assert_progress_and_cancel(model)
    half = ours(hf, dtype=torch.bfloat16)
    assert half.scan == "torch" and half.scan_dtype == torch.float32
    tr = engine.run(half, np.arange(50) % 37, probes=["logits", "layers.*.state"])
    full = engine.run(model, np.arange(50) % 37, probes="logits")
    assert np.abs(tr["logits"] - full["logits"]).max() < 0.1 * np.abs(full["logits"]).max()


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_serial_and_parallel_compiled_loops_give_the_same_bits():
    from engine.models.rwkv_scan import BLK, _numba_kernels

    serial, parallel = _numba_kernels()
    rng = np.random.default_rng(9)
    n, B, A = 40, 3, 2 * BLK + 5
    k, v = rng.normal(size=(2, n, B, A)).astype(np.float32) * 3
    w = -np.exp(rng.normal(size=(1, 1, A))).astype(np.float32)
    u = rng.normal(size=(n, B, A)).astype(np.float32)
    results = []
    for kernel in (serial, parallel):
        S = np.zeros((3, B, A), np.float32)
        S[2] = -1e38
        out, states = np.empty((n, B, A), np.float32), np.empty((n, B, A, 3), np.float32)
        kernel(w, u, k, v, S, out, states, True, BLK)
        results.append((out, states, S))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_attention_follows_edited_keys_decays_and_bonus():
    """The attention is built from the per-token k, w and u probes, so edits to them are in it:
    it still reproduces wkv exactly."""
    from engine import Intervention, Span

    model = ours(hf_model(16, d=16, layers=1), SCANS[-1], torch.float64)
    T = 60
    ivs = [Intervention("layers.0.w", "scale", 0.2, positions=Span(10, 30), units=[1, 2, 3]),
           Intervention("layers.0.k", "add", 2.0, positions=[15, 40]),
           Intervention("layers.0.u", "set", -5.0, positions=Span(20, 25))]
    trace = engine.run(model, np.random.default_rng(8).integers(0, 37, T), interventions=ivs, chunk=16)
    alpha = per_channel_attention(trace, 0, (0, T), (0, T))
    wkv = torch.einsum("ijc,jc->ic", alpha, torch.tensor(trace["layers.0.v"]))
    torch.testing.assert_close(wkv, torch.tensor(trace["layers.0.wkv"]), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(alpha.sum(1), torch.ones(T, 16, dtype=torch.float64), atol=1e-12, rtol=0)
