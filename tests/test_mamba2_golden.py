"""Golden tests for Mamba2 (SSD): logits and per-layer outputs vs ``transformers``'
``Mamba2ForCausalLM`` (its torch fallback) on random tiny configs, and every probe vs an
independent float64 sequential loop (tests/mamba2_reference.py); the implicit attention
reproduces the layer's output.

Tolerances: vs transformers (float32 both) 2e-5 absolute + relative on the residual stream and
logits; vs the float64 reference, float32 models within 2e-5 and float64 models within 1e-10;
the attention identity in float64 within 1e-8 (it holds to ~1e-14).  Engine chunks of 32 (SSD
blocks of 64 inside bigger chunks) and sequences of up to 300 steps cross several chunk
boundaries; the configs' own chunk_size varies and must not matter.
"""
import numpy as np
import pytest
import torch

import engine
from engine.models import mamba2 as m2
from engine.models.mamba2 import Mamba2Config, Mamba2Model, canonical_weight_shapes
from engine.models.mamba2_loading import from_transformers
from engine.models.mamba2_scan import ssd_attention, ssd_block
from family_checks import (assert_only_the_window_is_computed, assert_outputs_match_transformers,
                           assert_probes_match_reference, assert_progress_and_cancel)
from mamba2_reference import float64_weights, reference_mamba2

transformers = pytest.importorskip("transformers")
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()


def hf_model(seed=0, vocab=37, d=16, N=4, layers=2, heads=8, head_dim=4, groups=1, K=4, **kw):
    torch.manual_seed(seed)
    kw.setdefault("expand", heads * head_dim // d)
    cfg = transformers.Mamba2Config(vocab_size=vocab, hidden_size=d, state_size=N, num_hidden_layers=layers,
                                    num_heads=heads, head_dim=head_dim, n_groups=groups, conv_kernel=K, **kw)
    m = transformers.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():  # livelier weights than the init: larger dt, D, conv and norm terms
        for name, p in m.named_parameters():
            if name.endswith("dt_bias"):
                p.add_(torch.randn_like(p))
            elif name.endswith(("D", "conv1d.bias", "in_proj.bias", "out_proj.bias")):
                p.normal_(0, 0.5)
            elif name.endswith("norm.weight"):
                p.normal_(1, 0.3)
    return m


def ours(hf, dtype=torch.float32, **kw):
    return from_transformers(hf, dtype=dtype, **kw)


def reference(hf, ids, **kw):
    c = hf.config
    return reference_mamba2(float64_weights(hf.state_dict()), ids, c.num_hidden_layers, n_groups=c.n_groups,
                            eps=c.layer_norm_epsilon, dt_limit=tuple(c.time_step_limit), **kw)


CASES = [
    # seed, vocab, d_model, d_state, layers, heads, head_dim, groups, d_conv, extra config, lengths
    (0, 37, 16, 4, 2, 8, 4, 1, 4, {}, [1]),
    (1, 37, 16, 4, 2, 8, 4, 2, 4, {"chunk_size": 16}, [300, 129, 64]),
    (2, 50, 24, 8, 3, 6, 8, 3, 3, {"use_bias": True, "use_conv_bias": False, "chunk_size": 5}, [97, 5]),
    (3, 20, 8, 2, 1, 4, 8, 4, 2, {"tie_word_embeddings": True, "time_step_limit": (0.05, 0.5)}, [150, 150]),
    (4, 30, 32, 16, 2, 16, 4, 1, 4, {"chunk_size": 7}, [41]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"d{c[2]}-N{c[3]}-L{c[4]}-H{c[5]}-P{c[6]}-G{c[7]}-B{len(c[10])}"
                                                      f"-T{max(c[10])}")
def test_matches_transformers(case):
    seed, vocab, d, N, layers, H, P, G, K, extra, lengths = case
    hf = hf_model(seed, vocab, d, N, layers, H, P, G, K, **extra)
    model = ours(hf)
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, vocab, L) for L in lengths]
    trace = engine.run(model, seqs, probes=["logits", "layers.*.out"], chunk=32)
    assert_outputs_match_transformers(hf, trace, seqs, layers)


def test_batched_hf_run_matches_too():
    hf = hf_model(5, layers=2, groups=2)
    ids = np.random.default_rng(0).integers(0, 37, (3, 70))
    trace = engine.run(ours(hf), list(ids), probes="logits", chunk=16)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), use_cache=False).logits
    for s in range(3):
        torch.testing.assert_close(torch.tensor(trace.array("logits", s)), ref[s], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("chunk", [16, 256])  # 256: chunks of several SSD blocks
def test_every_probe_matches_the_float64_reference(dtype, chunk):
    hf = hf_model(6, d=16, N=4, layers=2, heads=4, head_dim=8, groups=2, use_bias=True)
    model = ours(hf, dtype)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 37, 150), rng.integers(0, 37, 23)]
    trace = engine.run(model, seqs, chunk=chunk)
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    assert_probes_match_reference(trace, seqs, lambda ids: reference(hf, ids), dtype, tol)


def test_a_model_built_from_a_config_matches_the_reference():
    """Untied head, biases, K = 1 (no conv buffer), one head per group, a dt ceiling."""
    torch.manual_seed(7)
    cfg = Mamba2Config(d_model=12, n_layer=2, vocab_size=19, n_heads=3, head_dim=5, d_state=3, n_groups=3, d_conv=1,
                       in_proj_bias=True, out_proj_bias=True, dt_max=0.7)
    w = {k: torch.randn(shape, dtype=torch.float64) * 0.5 for k, shape in canonical_weight_shapes(cfg).items()}
    model = Mamba2Model(cfg, w, dtype=torch.float64)
    ids = np.random.default_rng(2).integers(0, 19, 90)
    trace = engine.run(model, ids, chunk=32)
    ref = reference_mamba2(float64_weights(w), ids, 2, n_groups=3, dt_limit=(0.0, 0.7))
    assert trace["layers.0.dt"].max() == 0.7
    for name, expected in ref.items():
        np.testing.assert_allclose(trace[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_probe_specs_describe_shapes_and_dims():
    model = ours(hf_model(8, d=16, N=4, layers=2, heads=8, head_dim=4, groups=2))
    specs = {s.name: s for s in model.probe_specs()}
    assert specs["layers.0.state"].shape == (32, 4) and specs["layers.0.state"].dims == ("token", "unit", "state")
    assert specs["layers.1.B"].shape == (8,) and specs["layers.1.dt"].shape == (8,)
    assert specs["layers.0.in"].shape == (16,) and specs["layers.0.z"].shape == (32,)
    assert specs["layers.0.out"].shape == (16,) and specs["logits"].shape == (37,)
    assert specs["layers.0.attn"].shape == (256,) and specs["layers.0.attn"].dims == ("token", "key")
    for site in m2.SITES:
        assert specs[f"layers.1.{site}"].description
    assert "mean_h |alpha" in specs["layers.0.attn"].description
    model.attention_window = ((10, 20), (5, 45))
    assert {s.name: s for s in model.probe_specs()}["layers.0.attn"].shape == (40,)


def test_state_is_computed_only_when_asked_for():
    model = ours(hf_model(9))
    ids = np.arange(140) % 37
    a = engine.run(model, ids, probes="layers.*.y", chunk=128)
    b = engine.run(model, ids, probes=["layers.*.y", "layers.*.state"], chunk=128)
    assert a.probes == ["layers.0.y", "layers.1.y"]
    np.testing.assert_array_equal(a["layers.1.y"], b["layers.1.y"])
    assert b["layers.0.state"].shape == (140, 32, 4)


def test_the_ssd_block_equals_its_own_sequential_form():
    """One block straight from the recurrence, with a non-zero entering state and G = 2."""
    g = torch.Generator().manual_seed(0)
    L, nb, H, P, G, N = 37, 2, 4, 3, 2, 5
    x, Bm, Cm = (torch.randn(*shape, generator=g, dtype=torch.float64)
                 for shape in ((L, nb, H, P), (L, nb, G, N), (L, nb, G, N)))
    dt = torch.rand(L, nb, H, generator=g, dtype=torch.float64) * 2
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 3
    S0 = torch.randn(nb, H, P, N, generator=g, dtype=torch.float64)
    y, S_end, states = ssd_block(A, x, dt, Bm, Cm, S0, want_states=True)
    S = S0.clone()
    heads = torch.arange(H) // (H // G)
    for t in range(L):
        S = torch.exp(dt[t] * A)[..., None, None] * S + (dt[t][..., None] * x[t])[..., None] * Bm[t][:, heads, None, :]
        torch.testing.assert_close(states[t], S, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(y[t], (S @ Cm[t][:, heads, :, None])[..., 0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(S_end, S, atol=1e-12, rtol=1e-12)


# -- implicit attention ------------------------------------------------------------------


def per_head_attention(model, trace, layer, rows, cols, s=0):
    arr = lambda n: torch.tensor(trace.array(f"layers.{layer}.{n}", s))  # noqa: E731
    return ssd_attention(arr("dt"), arr("B"), arr("C"), model.A(layer), rows, cols, groups=model.config.n_groups,
                         reduce=None)


@pytest.mark.parametrize("T", [1, 17, 150])
def test_attention_reproduces_the_layer_output_in_float64(T):
    hf = hf_model(10, d=16, N=4, layers=2, heads=4, head_dim=8, groups=2)
    model = ours(hf, dtype=torch.float64)
    ids = np.random.default_rng(3).integers(0, 37, T)
    trace = engine.run(model, ids, chunk=64)
    H, P = 4, 8
    for k in range(2):
        D = model.layers[k].D
        x = torch.tensor(trace[f"layers.{k}.x"]).reshape(T, H, P)
        y = torch.tensor(trace[f"layers.{k}.y"]).reshape(T, H, P)
        alpha = per_head_attention(model, trace, k, (0, T), (0, T))
        assert alpha.dtype == torch.float64 and alpha.shape == (T, T, H)
        assert torch.all(torch.triu(alpha.permute(2, 0, 1), diagonal=1) == 0)  # causal
        torch.testing.assert_close(torch.einsum("ijh,jhp->ihp", alpha, x) + D[:, None] * x, y, atol=1e-8, rtol=1e-8)
        # a sub-window: rows r0..r1-1 from keys c0.. only, plus the state entering at c0
        if T >= 100:
            r0, r1, c0 = 80, 120, 50
            sub = per_head_attention(model, trace, k, (r0, r1), (c0, T))
            torch.testing.assert_close(sub, alpha[r0:r1, c0:], atol=1e-13, rtol=1e-10)
            S_c = torch.tensor(trace[f"layers.{k}.state"][c0 - 1]).reshape(H, P, -1)
            dt = torch.tensor(trace[f"layers.{k}.dt"])
            Cm = torch.tensor(trace[f"layers.{k}.C"]).reshape(T, 2, -1)[:, torch.arange(H) // 2]
            decay = torch.exp(model.A(k) * (torch.cumsum(dt, 0)[r0:r1] - torch.cumsum(dt, 0)[c0 - 1]))
            from_state = torch.einsum("hpn,ihn->ihp", S_c, Cm[r0:r1]) * decay[..., None]
            got = torch.einsum("ijh,jhp->ihp", sub, x[c0:]) + from_state + D[:, None] * x[r0:r1]
            torch.testing.assert_close(got, y[r0:r1], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("rows,cols", [((0, 90), (0, 90)), ((50, 90), (20, 70)), ((60, 90), (0, 13)),
                                       ((5, 40), (30, 90)), ((33, 34), (0, 90))])
def test_any_window_equals_the_same_part_of_the_full_matrix(rows, cols):
    model = ours(hf_model(11, d=16, N=4, layers=1, groups=2), dtype=torch.float64)
    ids = np.random.default_rng(4).integers(0, 37, 90)
    trace = engine.run(model, ids, probes="layers.0.*", chunk=32)
    full = per_head_attention(model, trace, 0, (0, 90), (0, 90))
    part = per_head_attention(model, trace, 0, rows, cols)
    torch.testing.assert_close(part, full[rows[0]:rows[1], cols[0]:cols[1]], atol=1e-13, rtol=1e-10)
    # a direct sum for a few entries, written out from the definition
    dt, B, C = (torch.tensor(trace[f"layers.0.{n}"]) for n in ("dt", "B", "C"))
    A = model.A(0)
    for i, j in [(rows[0], cols[0]), (rows[1] - 1, cols[0]), (rows[1] - 1, min(cols[1], rows[1]) - 1)]:
        expect = torch.zeros(8, dtype=torch.float64)
        if j <= i:
            for h in range(8):
                g = h // 4
                cb = C[i, g * 4:(g + 1) * 4] @ B[j, g * 4:(g + 1) * 4]
                expect[h] = cb * torch.exp(A[h] * dt[j + 1:i + 1, h].sum()) * dt[j, h]
        torch.testing.assert_close(part[i - rows[0], j - cols[0]], expect, atol=1e-13, rtol=1e-10)


def test_attn_probe_is_the_documented_reduction_over_the_window():
    model = ours(hf_model(12, d=16, N=4, layers=2, groups=2))
    model.attention_window = ((20, 60), (10, 50))
    seqs = [np.random.default_rng(5).integers(0, 37, 80), np.random.default_rng(6).integers(0, 37, 45)]
    trace = engine.run(model, seqs, chunk=16)
    for s, L in enumerate([80, 45]):
        att = trace.array("layers.1.attn", s)
        assert att.shape == (L, 40)
        assert np.all(np.isnan(att[:20])) and np.all(np.isnan(att[60:]))
        hi = min(60, L)
        alpha = per_head_attention(model, trace, 1, (20, hi), (10, 50), s)
        np.testing.assert_allclose(att[20:hi], alpha.abs().mean(-1).numpy(), atol=1e-6, rtol=1e-5)
        np.testing.assert_array_equal(m2.attention_from_trace(trace, model, 1, (20, hi), (10, 50), sequence=s),
                                      att[20:hi])
        assert np.all(att[20:hi][np.triu_indices(hi - 20, k=11, m=40)] == 0)  # key j > row i


def test_a_long_input_never_costs_t_squared():
    """Only the window is computed: 3000 steps, a 16 x 16 window."""
    assert_only_the_window_is_computed(ours(hf_model(13, d=16, N=4, layers=1)), 3000)


def test_progress_cancel_and_half_precision():
    model = ours(hf_model(14, layers=2))
    assert_progress_and_cancel(model)
    half = ours(hf_model(14, layers=2), dtype=torch.bfloat16)
    assert half.scan_dtype == torch.float32
    tr = engine.run(half, np.arange(50) % 37, probes=["logits", "layers.*.state"])
    assert tr["layers.1.state"].dtype == np.float32 and np.isfinite(tr["layers.1.state"]).all()
    full = engine.run(model, np.arange(50) % 37, probes="logits")
    assert np.abs(tr["logits"] - full["logits"]).max() < 0.1 * np.abs(full["logits"]).max()
