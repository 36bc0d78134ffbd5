"""Golden tests for xLSTM (mLSTM): logits and every probe the library exposes vs ``transformers``'
``xLSTMForCausalLM`` (forward hooks on its modules; its last cache state) on random tiny configs,
and every probe vs an independent float64 sequential loop (tests/xlstm_reference.py); the
implicit attention reproduces the cell output.

Tolerances (float32): 5e-5 relative, plus 5e-5 of the array's largest magnitude (at least 1)
absolute, vs transformers and vs the float64 reference alike; for ``h`` 1e-3 of its largest
magnitude absolute: h is a quotient whose numerator C^T q is a cancelling sum of many terms, and
transformers' own float32 h differs from the float64 loop by up to 4e-4 of it on these configs
(the multihead norm after it brings the error back to the 5e-5 level of ``mix`` and ``out``).
Float64 models match the float64 reference within 1e-10; the attention identity in float64 within 1e-8 (it holds to ~1e-14).
Engine chunks of 32 and 256 and cell blocks of 64 steps, with sequences up to 300 steps, cross
every kind of boundary.
"""
import numpy as np
import pytest
import torch

import engine
from engine.models.xlstm import XLSTMConfig, XLSTMModel, canonical_weight_shapes, mlstm_attention
from family_checks import assert_only_the_window_is_computed, assert_probes_match_reference, assert_progress_and_cancel
from xlstm_reference import float64_weights, reference_xlstm

transformers = pytest.importorskip("transformers")
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()


def hf_model(seed=0, vocab=37, d=32, layers=2, heads=4, **kw):
    torch.manual_seed(seed)
    kw.setdefault("ffn_proj_factor", 2.0)
    kw.setdefault("ffn_round_up_to_multiple_of", 16)
    cfg = transformers.xLSTMConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_heads=heads,
                                   chunk_size=16, **kw)
    m = transformers.xLSTMForCausalLM(cfg).eval()
    with torch.no_grad():  # livelier weights than the init (zero gate weights, input gates at -10)
        for name, p in m.named_parameters():
            if "ogate_preact" in name:
                p.normal_(0, 0.3)
            elif "igate_preact" in name or "fgate_preact" in name:
                p.normal_(0, 0.4) if name.endswith("weight") else p.normal_(2.0 if "fgate" in name else 0.0, 2.0)
            elif "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
            elif name.endswith(".bias"):
                p.normal_(0, 0.3)
    return m


def float32_tolerance(name, expected):
    """(atol, rtol) for comparing a float32 array with a reference (see the module docstring)."""
    scale = float(np.abs(np.asarray(expected)).max()) if np.size(expected) else 1.0
    if name.endswith(".h"):
        return 1e-3 * scale, 5e-5
    return 5e-5 * max(1.0, scale), 5e-5


def ours(hf, dtype=torch.float32, **kw):
    from engine.models.xlstm import from_transformers

    return from_transformers(hf, dtype=dtype, **kw)


def ref_kwargs(hf):
    c = hf.config
    return {"heads": c.num_heads, "norm_eps": c.norm_eps, "eps": c.eps, "gate_cap": c.gate_soft_cap,
            "logit_cap": c.output_logit_soft_cap}


def hf_probes(hf, ids):
    """Every internal transformers shows, by forward hooks: {site: [T, ...]} per layer, and logits."""
    got = {}
    hooks = []
    c = hf.config

    def keep(name, f=lambda out, inp: out):
        return lambda mod, inp, out: got.__setitem__(name, f(out, inp)[0].detach().clone())

    for k, blk in enumerate(hf.backbone.blocks):
        m = blk.mlstm_layer
        cap = lambda z: c.gate_soft_cap * torch.tanh(z / c.gate_soft_cap)  # noqa: E731
        L = f"layers.{k}."
        hooks += [blk.norm_mlstm.register_forward_hook(keep(L + "in")),
                  m.q.register_forward_hook(keep(L + "q")), m.k.register_forward_hook(keep(L + "k")),
                  m.v.register_forward_hook(keep(L + "v")),
                  m.igate_preact.register_forward_hook(keep(L + "gate_i", lambda o, i: cap(o))),
                  m.fgate_preact.register_forward_hook(keep(L + "gate_f", lambda o, i: torch.nn.functional.logsigmoid(cap(o)))),
                  m.ogate_preact.register_forward_hook(keep(L + "gate_o", lambda o, i: torch.sigmoid(o))),
                  m.multihead_norm.register_forward_hook(keep(L + "h", lambda o, i: i[0].flatten(-2))),
                  m.out_proj.register_forward_hook(keep(L + "mix")),
                  blk.register_forward_hook(keep(L + "out", lambda o, i: o[0]))]
    try:
        with torch.no_grad():
            got["logits"] = hf(torch.tensor(ids[None]), use_cache=False).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return got


CASES = [
    # seed, vocab, d_model, layers, heads, extra config, lengths, chunk
    (0, 37, 32, 2, 4, {}, [1], 32),
    (1, 37, 32, 2, 4, {}, [300, 129, 64], 32),
    (2, 50, 48, 3, 2, {"use_bias": True, "qk_dim_factor": 1.0}, [97, 5], 256),
    (3, 20, 16, 1, 1, {"v_dim_factor": 2.0, "norm_eps": 1e-3}, [150, 150], 64),
    (4, 30, 32, 2, 8, {"gate_soft_cap": 4.0, "output_logit_soft_cap": 2.0, "eps": 1e-3}, [300], 256),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"d{c[2]}-L{c[3]}-H{c[4]}-B{len(c[6])}-T{max(c[6])}-c{c[7]}")
def test_every_probe_matches_transformers(case):
    seed, vocab, d, layers, heads, extra, lengths, chunk = case
    hf = hf_model(seed, vocab, d, layers, heads, **extra)
    model = ours(hf)
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, vocab, L) for L in lengths]
    trace = engine.run(model, seqs, chunk=chunk)
    for s, ids in enumerate(seqs):
        ref = hf_probes(hf, ids)
        assert len(ref) == 10 * layers + 1
        for name, expected in ref.items():
            atol, rtol = float32_tolerance(name, expected)
            torch.testing.assert_close(torch.tensor(trace.array(name, s)), expected, atol=atol, rtol=rtol, msg=name)


def test_output_hidden_states_trap_and_batched_logits():
    """transformers' hidden_states are the embedding, layers 0..N-2 and the final norm (the last
    layer's output is missing): checked here so the hook comparison above stays honest."""
    hf = hf_model(5, layers=3)
    ids = np.random.default_rng(0).integers(0, 37, (3, 70))
    trace = engine.run(ours(hf), list(ids), probes=["logits", "embed", "layers.*.out"], chunk=16)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), use_cache=False, output_hidden_states=True)
    assert len(ref.hidden_states) == 4
    for s in range(3):
        torch.testing.assert_close(torch.tensor(trace.array("embed", s)), ref.hidden_states[0][s])
        for k in range(2):
            torch.testing.assert_close(torch.tensor(trace.array(f"layers.{k}.out", s)), ref.hidden_states[k + 1][s],
                                       atol=5e-5, rtol=5e-5)
        torch.testing.assert_close(torch.tensor(trace.array("logits", s)), ref.logits[s], atol=5e-5, rtol=5e-5)


def test_last_state_matches_the_transformers_cache():
    """With use_cache=True (hidden 128: the cache needs qk and v widths that are multiples of 64)
    the cache holds each layer's stabilised (C, n, m) after the last step."""
    hf = hf_model(6, vocab=40, d=128, layers=2, heads=2)
    ids = np.random.default_rng(1).integers(0, 40, 90)
    trace = engine.run(ours(hf), ids, probes=["layers.*.state", "layers.*.normalizer", "layers.*.m"], chunk=32)
    with torch.no_grad():
        cache = hf(torch.tensor(ids[None]), use_cache=True).cache
    for k in range(2):
        C, n, m = (t[0] for t in cache.rnn_state[k])
        m_ours = torch.tensor(trace[f"layers.{k}.m"][-1])
        torch.testing.assert_close(m_ours, m[:, 0], atol=1e-5, rtol=1e-5)
        shrink = torch.exp(-m_ours)
        torch.testing.assert_close(torch.tensor(trace[f"layers.{k}.state"][-1]) * shrink[:, None, None], C,
                                   atol=5e-5, rtol=5e-5)
        torch.testing.assert_close(torch.tensor(trace[f"layers.{k}.normalizer"][-1]) * shrink[:, None], n,
                                   atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("chunk", [16, 256])
def test_every_probe_matches_the_float64_reference(dtype, chunk):
    hf = hf_model(7, d=32, layers=2, heads=2, use_bias=True)
    model = ours(hf, dtype)
    w = float64_weights(hf.state_dict())
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 37, 140), rng.integers(0, 37, 23)]
    trace = engine.run(model, seqs, chunk=chunk)
    assert_probes_match_reference(trace, seqs, lambda ids: reference_xlstm(w, ids, 2, **ref_kwargs(hf)), dtype,
                                  float32_tolerance if dtype == torch.float32 else 1e-10)


def test_a_model_built_from_a_config_matches_the_reference():
    torch.manual_seed(8)
    cfg = XLSTMConfig(d_model=12, n_layer=2, vocab_size=19, num_heads=3, qk_dim=9, v_dim=15, ffn_dim=20,
                      use_bias=True, gate_soft_cap=5.0, logit_soft_cap=None, eps=1e-4)
    w = {k: torch.randn(shape, dtype=torch.float64) * 0.5 for k, shape in canonical_weight_shapes(cfg).items()}
    model = XLSTMModel(cfg, w, dtype=torch.float64)
    ids = np.random.default_rng(2).integers(0, 19, 150)
    trace = engine.run(model, ids, chunk=128)
    ref = reference_xlstm(float64_weights(w), ids, 2, heads=3, gate_cap=5.0, logit_cap=None, eps=1e-4)
    for name, expected in ref.items():
        np.testing.assert_allclose(trace[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_probe_specs_describe_shapes_and_dims():
    model = ours(hf_model(9, d=32, heads=4))
    specs = {s.name: s for s in model.probe_specs()}
    assert specs["layers.0.state"].shape == (4, 4, 8) and specs["layers.0.state"].dims == ("token", "head", "key", "value")
    assert specs["layers.1.normalizer"].shape == (4, 4)
    assert specs["layers.1.gate_f"].shape == (4,) and specs["layers.1.gate_f"].dims == ("token", "head")
    assert specs["layers.0.q"].shape == (16,) and specs["layers.0.v"].shape == (32,) and specs["logits"].shape == (37,)
    assert specs["layers.0.attn"].shape == (256,) and specs["layers.0.attn"].dims == ("token", "key")
    for site in model.sites:
        assert specs[f"layers.1.{site}"].description
    model.attention_window = ((10, 20), (5, 45))
    assert {s.name: s for s in model.probe_specs()}["layers.0.attn"].shape == (40,)


def test_state_is_computed_only_when_asked_for():
    model = ours(hf_model(10))
    ids = np.arange(100) % 37
    a = engine.run(model, ids, probes="layers.*.h", chunk=32)
    b = engine.run(model, ids, probes=["layers.*.h", "layers.*.state"], chunk=32)
    assert a.probes == ["layers.0.h", "layers.1.h"]
    np.testing.assert_array_equal(a["layers.1.h"], b["layers.1.h"])
    assert b["layers.0.state"].shape == (100, 4, 4, 8)


# -- implicit attention ------------------------------------------------------------------


def per_head_attention(trace, layer, rows, cols, s=0, eps=1e-6):
    arr = lambda n: torch.tensor(trace.array(f"layers.{layer}.{n}", s))  # noqa: E731
    return mlstm_attention(arr("q"), arr("k"), arr("gate_i"), arr("gate_f"), arr("normalizer"), arr("m"),
                           rows, cols, eps=eps)


@pytest.mark.parametrize("T", [1, 17, 150])
def test_attention_reproduces_the_cell_output_in_float64(T):
    hf = hf_model(11, layers=2, heads=4)
    model = ours(hf, torch.float64)
    ids = np.random.default_rng(3).integers(0, 37, T)
    trace = engine.run(model, ids, chunk=64)
    for k in range(2):
        v = torch.tensor(trace[f"layers.{k}.v"]).reshape(T, 4, 8)
        h = torch.tensor(trace[f"layers.{k}.h"]).reshape(T, 4, 8)
        alpha = per_head_attention(trace, k, (0, T), (0, T))
        assert alpha.dtype == torch.float64 and alpha.shape == (T, T, 4)
        assert torch.all(torch.triu(alpha.permute(2, 0, 1), diagonal=1) == 0)  # causal
        torch.testing.assert_close(torch.einsum("ijh,jhd->ihd", alpha, v), h, atol=1e-8, rtol=1e-8)
        # a sub-window: rows r, all their keys split in two column windows that add up
        r = (T // 3, T)
        left = per_head_attention(trace, k, r, (0, T // 2))
        right = per_head_attention(trace, k, r, (T // 2, T))
        got = torch.einsum("ijh,jhd->ihd", left, v[:T // 2]) + torch.einsum("ijh,jhd->ihd", right, v[T // 2:])
        torch.testing.assert_close(got, h[r[0]:], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("rows,cols", [((0, 90), (0, 90)), ((50, 90), (20, 70)), ((60, 90), (0, 13)),
                                       ((5, 40), (30, 90)), ((33, 34), (0, 90))])
def test_any_window_equals_the_same_part_of_the_full_matrix(rows, cols):
    model = ours(hf_model(12, layers=1), dtype=torch.float64)
    ids = np.random.default_rng(4).integers(0, 37, 90)
    trace = engine.run(model, ids, probes="layers.0.*", chunk=32)
    full = per_head_attention(trace, 0, (0, 90), (0, 90))
    part = per_head_attention(trace, 0, rows, cols)
    torch.testing.assert_close(part, full[rows[0]:rows[1], cols[0]:cols[1]], atol=1e-13, rtol=1e-10)
    # a few entries written out from the definition (h = 0 state, 1/sqrt(d_qk) query scale)
    q, kk = (torch.tensor(trace[f"layers.0.{n}"]).reshape(90, 4, 4) for n in ("q", "k"))
    li, lf, m = (torch.tensor(trace[f"layers.0.{n}"]) for n in ("gate_i", "gate_f", "m"))
    n = torch.tensor(trace["layers.0.normalizer"])
    for i, j in [(rows[0], cols[0]), (rows[1] - 1, cols[0]), (rows[1] - 1, min(cols[1], rows[1]) - 1)]:
        expect = torch.zeros(4, dtype=torch.float64)
        if j <= i:
            qs = q[i] / 2.0
            den = torch.maximum((qs * n[i]).sum(-1).abs(), torch.ones(4)) * torch.exp(-m[i]) + 1e-6
            expect = (qs * kk[j]).sum(-1) * torch.exp(lf[j + 1:i + 1].sum(0) + li[j] - m[i]) / den
        torch.testing.assert_close(part[i - rows[0], j - cols[0]], expect, atol=1e-13, rtol=1e-10)


def test_attn_probe_is_the_documented_reduction_over_the_window():
    model = ours(hf_model(13, layers=2))
    model.attention_window = ((20, 60), (10, 50))
    seqs = [np.random.default_rng(5).integers(0, 37, 80), np.random.default_rng(6).integers(0, 37, 45)]
    trace = engine.run(model, seqs, chunk=16)
    for s, L in enumerate([80, 45]):
        att = trace.array("layers.1.attn", s)
        assert att.shape == (L, 40)
        assert np.all(np.isnan(att[:20])) and np.all(np.isnan(att[60:]))
        hi = min(60, L)
        alpha = per_head_attention(trace, 1, (20, hi), (10, 50), s)
        np.testing.assert_allclose(att[20:hi], alpha.abs().mean(-1).numpy(), atol=1e-6, rtol=1e-5)
        assert np.all(att[20:hi][np.triu_indices(hi - 20, k=11, m=40)] == 0)  # key j > row i


def test_a_long_input_never_costs_t_squared():
    """Only the window is computed: 2000 steps, a 16 x 16 window."""
    assert_only_the_window_is_computed(ours(hf_model(14, layers=1)), 2000)


def test_progress_cancel_and_half_precision():
    model = ours(hf_model(15, layers=2))
    assert_progress_and_cancel(model)
    half = ours(hf_model(15, layers=2), dtype=torch.bfloat16)  # the cell itself runs in float32
    assert half.initial_state(1)[0].dtype == torch.float32
    tr = engine.run(half, np.arange(50) % 37, probes="logits")["logits"]
    full = engine.run(model, np.arange(50) % 37, probes="logits")["logits"]
    # bfloat16 q, k and gates: the ill-conditioned h of a few steps moves some logits a lot
    assert np.abs(tr - full).mean() < 0.1 * np.abs(full).mean()
    assert np.corrcoef(tr.ravel(), full.ravel())[0, 1] > 0.99
