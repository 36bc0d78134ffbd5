"""Golden tests for Mamba (1): logits and per-layer outputs vs ``transformers``'
``MambaForCausalLM`` on random tiny configs, and every probe vs an independent float64
sequential loop (tests/mamba_reference.py); the implicit attention reproduces the scan.

Tolerances: vs transformers (float32 both) 2e-5 absolute + relative on the residual stream and
logits; vs the float64 reference, float32 models within 2e-5 and float64 models within 1e-10;
the attention identity in float64 within 1e-8 (it holds to ~1e-15).  Chunks are short so that
sequences of up to 300 steps cross several chunk boundaries.
"""
import numpy as np
import pytest
import torch

import engine
from engine.analysis.implicit_attention import scan_from_attention, selective_scan_attention
from engine.models.mamba import MambaConfig, MambaModel, canonical_weight_shapes, numba_available
from family_checks import (assert_only_the_window_is_computed, assert_outputs_match_transformers,
                           assert_probes_match_reference, assert_progress_and_cancel)
from mamba_reference import float64_weights, reference_mamba

transformers = pytest.importorskip("transformers")
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

SCANS = ["torch"] + (["numba"] if numba_available() else [])


def hf_model(seed=0, vocab=37, d=16, N=4, layers=2, expand=2, K=4, **kw):
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=d, state_size=N, num_hidden_layers=layers,
                                   expand=expand, conv_kernel=K, **kw)
    m = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # livelier weights than the init: larger dt, D and conv terms
        for name, p in m.named_parameters():
            if name.endswith("dt_proj.bias"):
                p.add_(torch.randn_like(p))
            elif name.endswith(("D", "conv1d.bias", "in_proj.bias", "out_proj.bias")):
                p.normal_(0, 0.5)
    return m


def ours(hf, scan="torch", dtype=torch.float32, **kw):
    from engine.models.mamba import from_transformers

    return from_transformers(hf, scan=scan, dtype=dtype, **kw)


CASES = [
    # seed, vocab, d_model, d_state, layers, expand, d_conv, extra config, lengths
    (0, 37, 16, 4, 2, 2, 4, {}, [1]),
    (1, 37, 16, 4, 2, 2, 4, {}, [300, 129, 64]),
    (2, 50, 24, 8, 3, 2, 3, {"use_bias": True, "use_conv_bias": False}, [97, 5]),
    (3, 20, 8, 2, 1, 3, 2, {"time_step_rank": 3, "tie_word_embeddings": False}, [150, 150]),
    (4, 30, 32, 16, 2, 2, 4, {}, [41]),
]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"d{c[2]}-N{c[3]}-L{c[4]}-K{c[6]}-B{len(c[8])}-T{max(c[8])}")
def test_matches_transformers(case, scan):
    seed, vocab, d, N, layers, expand, K, extra, lengths = case
    hf = hf_model(seed, vocab, d, N, layers, expand, K, **extra)
    model = ours(hf, scan)
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, vocab, L) for L in lengths]
    trace = engine.run(model, seqs, probes=["logits", "layers.*.out"], chunk=32)
    assert_outputs_match_transformers(hf, trace, seqs, layers)


def test_batched_hf_run_matches_too():
    hf = hf_model(5, layers=2)
    ids = np.random.default_rng(0).integers(0, 37, (3, 70))
    trace = engine.run(ours(hf), list(ids), probes="logits", chunk=16)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), use_cache=False).logits
    for s in range(3):
        torch.testing.assert_close(torch.tensor(trace.array("logits", s)), ref[s], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_every_probe_matches_the_float64_reference(scan, dtype):
    hf = hf_model(6, d=16, N=4, layers=2, use_bias=True)
    model = ours(hf, scan, dtype)
    w = float64_weights(hf.state_dict())
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 37, 75), rng.integers(0, 37, 23)]
    trace = engine.run(model, seqs, chunk=16)
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    assert_probes_match_reference(trace, seqs, lambda ids: reference_mamba(w, ids, 2), dtype, tol)


def test_layer_norm_variant_and_untied_head_match_the_reference():
    """mamba_ssm models with rms_norm=false use LayerNorm (weight and bias)."""
    torch.manual_seed(7)
    cfg = MambaConfig(d_model=12, n_layer=2, vocab_size=19, d_inner=20, d_state=3, d_conv=3, norm="layer",
                      tie_embeddings=False, in_proj_bias=True)
    w = {k: torch.randn(shape, dtype=torch.float64) * 0.3 for k, shape in canonical_weight_shapes(cfg).items()}
    model = MambaModel(cfg, w, dtype=torch.float64, scan="torch")
    ids = np.random.default_rng(2).integers(0, 19, 50)
    trace = engine.run(model, ids, chunk=16)
    ref = reference_mamba(float64_weights(w), ids, 2, norm="layer")
    for name, expected in ref.items():
        np.testing.assert_allclose(trace[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_probe_specs_describe_shapes_and_dims():
    model = ours(hf_model(8, d=16, N=4, layers=2))
    specs = {s.name: s for s in model.probe_specs()}
    assert specs["layers.0.state"].shape == (32, 4) and specs["layers.0.state"].dims == ("token", "unit", "state")
    assert specs["layers.1.B"].shape == (4,) and specs["layers.1.B"].dims == ("token", "state")
    assert specs["layers.0.out"].shape == (16,) and specs["logits"].shape == (37,)
    assert specs["layers.0.attn"].shape == (256,) and specs["layers.0.attn"].dims == ("token", "key")
    for site in ("in", "conv", "dt", "B", "C", "state", "gate", "y", "out", "attn"):
        assert specs[f"layers.1.{site}"].description
    model.attention_window = ((10, 20), (5, 45))
    assert {s.name: s for s in model.probe_specs()}["layers.0.attn"].shape == (40,)


def test_state_is_computed_only_when_asked_for():
    model = ours(hf_model(9))
    ids = np.arange(40) % 37
    a = engine.run(model, ids, probes="layers.*.y", chunk=16)
    b = engine.run(model, ids, probes=["layers.*.y", "layers.*.state"], chunk=16)
    assert a.probes == ["layers.0.y", "layers.1.y"]
    np.testing.assert_array_equal(a["layers.1.y"], b["layers.1.y"])
    assert b["layers.0.state"].shape == (40, 32, 4)


# -- implicit attention ------------------------------------------------------------------


def per_channel_attention(model, trace, layer, rows, cols, s=0):
    arr = lambda n: torch.tensor(trace.array(f"layers.{layer}.{n}", s))  # noqa: E731
    return selective_scan_attention(arr("dt"), arr("B"), arr("C"), model.A(layer), rows, cols, reduce=None)


@pytest.mark.parametrize("T", [1, 17, 70])
def test_attention_reproduces_the_scan_output_in_float64(T):
    hf = hf_model(10, d=16, N=4, layers=2)
    model = ours(hf, dtype=torch.float64)
    ids = np.random.default_rng(3).integers(0, 37, T)
    trace = engine.run(model, ids, chunk=16)
    w = float64_weights(hf.state_dict())
    for k in range(2):
        alpha = per_channel_attention(model, trace, k, (0, T), (0, T))
        assert alpha.dtype == torch.float64 and alpha.shape == (T, T, 32)
        assert torch.all(torch.triu(alpha.permute(2, 0, 1), diagonal=1) == 0)  # causal
        u = torch.tensor(trace[f"layers.{k}.conv"])
        scan = scan_from_attention(alpha, u, torch.tensor(w[f"backbone.layers.{k}.mixer.D"]))
        y = torch.tensor(trace[f"layers.{k}.y"]) / torch.tensor(trace[f"layers.{k}.gate"])
        torch.testing.assert_close(scan, y, atol=1e-8, rtol=1e-8)
        # and from the state: y_i - D u_i = C_i . s_i
        s = torch.tensor(trace[f"layers.{k}.state"])
        torch.testing.assert_close(scan - u * torch.tensor(w[f"backbone.layers.{k}.mixer.D"]),
                                   (s @ torch.tensor(trace[f"layers.{k}.C"])[:, :, None])[..., 0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("rows,cols", [((0, 90), (0, 90)), ((50, 90), (20, 70)), ((60, 90), (0, 13)),
                                       ((5, 40), (30, 90)), ((33, 34), (0, 90))])
def test_any_window_equals_the_same_part_of_the_full_matrix(rows, cols):
    model = ours(hf_model(11, d=16, N=4, layers=1), dtype=torch.float64)
    ids = np.random.default_rng(4).integers(0, 37, 90)
    trace = engine.run(model, ids, probes="layers.0.*", chunk=32)
    full = per_channel_attention(model, trace, 0, (0, 90), (0, 90))
    part = per_channel_attention(model, trace, 0, rows, cols)
    torch.testing.assert_close(part, full[rows[0]:rows[1], cols[0]:cols[1]], atol=1e-13, rtol=1e-10)
    # a direct sum over pairs for a few entries, written out from the definition
    dt, B, C = (torch.tensor(trace[f"layers.0.{n}"]) for n in ("dt", "B", "C"))
    A = model.A(0)
    for i, j in [(rows[0], cols[0]), (rows[1] - 1, cols[0]), (rows[1] - 1, min(cols[1], rows[1]) - 1)]:
        expect = torch.zeros(32, dtype=torch.float64)
        if j <= i:
            decay = torch.exp(A * dt[j + 1:i + 1].sum(0)[:, None])
            expect = (C[i] * decay * dt[j][:, None] * B[j]).sum(-1)
        torch.testing.assert_close(part[i - rows[0], j - cols[0]], expect, atol=1e-13, rtol=1e-10)


def test_attn_probe_is_the_documented_reduction_over_the_window():
    model = ours(hf_model(12, d=16, N=4, layers=2))
    model.attention_window = ((20, 60), (10, 50))
    seqs = [np.random.default_rng(5).integers(0, 37, 80), np.random.default_rng(6).integers(0, 37, 45)]
    trace = engine.run(model, seqs, chunk=16)
    for s, L in enumerate([80, 45]):
        att = trace.array("layers.1.attn", s)
        assert att.shape == (L, 40)
        assert np.all(np.isnan(att[:20])) and np.all(np.isnan(att[60:]))
        hi = min(60, L)
        alpha = per_channel_attention(model, trace, 1, (20, hi), (10, 50), s)
        np.testing.assert_allclose(att[20:hi], alpha.abs().mean(-1).numpy(), atol=1e-6, rtol=1e-5)
        assert np.all(att[20:hi][np.triu_indices(hi - 20, k=11, m=40)] == 0)  # key j > row i


@pytest.mark.parametrize("rows,cols", [((0, 70), (0, 70)), ((30, 70), (5, 50))])
def test_contribution_attention_weights_each_channel_by_what_reaches_the_output(rows, cols):
    """``reduce="weighted"`` with |u| and |gate| * ||W_out column||: the per-channel sum, and an
    upper bound of the norm of step j's exact contribution to the layer's output at step i."""
    from engine.analysis.implicit_attention import contribution_attention

    model = ours(hf_model(13, d=16, N=4, layers=2), dtype=torch.float64)
    ids = np.random.default_rng(7).integers(0, 37, 70)
    trace = engine.run(model, ids, chunk=16)
    for k in range(2):
        got = contribution_attention(trace, model, k, rows, cols)
        alpha = per_channel_attention(model, trace, k, rows, cols)  # [R, W, D]
        u = torch.tensor(trace[f"layers.{k}.conv"])[cols[0]:cols[1]]
        gate = torch.tensor(trace[f"layers.{k}.gate"])[rows[0]:rows[1]]
        W = model.out_proj_weight(k)
        expect = torch.einsum("ijc,jc,ic,c->ij", alpha.abs(), u.abs(), gate.abs(), W.norm(dim=0))
        np.testing.assert_allclose(got, expect.numpy(), atol=1e-12, rtol=1e-10)
        exact = torch.einsum("ijc,jc,ic,dc->ijd", alpha, u, gate, W).norm(dim=-1)  # ||W_out (alpha u gate)||
        assert np.all(got >= exact.numpy() - 1e-12) and float(exact.max()) > 0
    with pytest.raises(ValueError):
        selective_scan_attention(*(torch.rand(5, 2) for _ in range(3)), -torch.rand(2, 2), (0, 5), (0, 5),
                                 reduce="weighted")


def test_a_long_input_never_costs_t_squared():
    """Only the window is computed: 2000 steps, a 16 x 16 window."""
    assert_only_the_window_is_computed(ours(hf_model(13, d=16, N=4, layers=1)), 2000)


def test_progress_cancel_and_half_precision():
    model = ours(hf_model(14, layers=2))
    assert_progress_and_cancel(model)
    half = ours(hf_model(14, layers=2), dtype=torch.bfloat16)
    assert half.scan == "torch"
    tr = engine.run(half, np.arange(50) % 37, probes="logits")
    full = engine.run(model, np.arange(50) % 37, probes="logits")
    assert np.abs(tr["logits"] - full["logits"]).max() < 0.1 * np.abs(full["logits"]).max()


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_the_compiled_scan_leaves_torchs_thread_count_alone():
    """numba's OpenMP layer sets the calling thread's OpenMP thread count, which torch shares:
    after a scan torch must still run on the threads the caller chose (else later matmuls round
    differently from a one-thread run of the same numbers)."""
    model = ours(hf_model(14, d=16, N=4, layers=1), scan="numba")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        engine.run(model, np.arange(40) % 37, probes="logits")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
