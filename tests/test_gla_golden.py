"""Golden tests for GLA and RetNet (fla layouts): logits and every probe vs an independent float64
loop of the papers' recurrent form (tests/gla_reference.py), the recurrence output vs fla's own
``naive.py`` functions where fla-core is installed, and the implicit attention reproducing the
recurrence output.  There is no ``transformers`` implementation of these families, and fla's
model classes do not run on a CPU.

Tolerances: float64 models vs the float64 loop within 1e-10 (they agree to ~1e-13); float32
models within 2e-4 absolute + relative (the state sums up to a few hundred terms; measured
~2e-5); vs fla's naive functions (which compute in float32) 2e-5; the attention identity in
float64 within 1e-8.  Sequences of up to 300 steps with chunks of 32 to 128 cross several
chunk and sub-chunk (64 steps) boundaries; batches hold sequences of different lengths.
"""
import numpy as np
import pytest
import torch

import engine
from engine.models.gla import LinearAttentionModel, attention_from_trace
from engine.models.gla_scan import SUB, linear_attention
from gla_reference import fla_config, float64_weights, load_fla_naive, random_checkpoint, reference_lm, save_fla_folder

CASES = [
    # family, config, lengths, chunk
    ("gla", dict(), [1], 64),
    ("gla", dict(), [300, 129, 64], 128),
    ("gla", dict(d=32, heads=4, kv_heads=2, use_short_conv=True, conv_size=3, clamp_min=-0.3), [97, 5], 32),
    ("gla", dict(feature_map="relu", use_output_gate=False, fuse_norm=False, tie_word_embeddings=True, layers=1),
     [150, 150], 64),
    ("gla", dict(d=24, heads=3, expand_k=1.0, expand_v=2.0, feature_map="swish"), [70], 256),
    ("retnet", dict(), [300, 41], 128),
    ("retnet", dict(d=32, heads=4, kv_heads=2, elementwise_affine=False, layers=3), [77, 76], 32),
    ("retnet", dict(fuse_norm=False, use_output_gate=False, feature_map="sigmoid"), [1, 2], 16),
]


def build(family, seed=0, dtype=torch.float32, tmp=None, **kw):
    """(model loaded from an fla-layout folder, state dict, config)."""
    import tempfile

    cfg = fla_config(family, **kw)
    sd = random_checkpoint(cfg, seed)
    folder = save_fla_folder(tmp or tempfile.mkdtemp(prefix=f"seqscope-{family}-"), sd, cfg)
    return engine.load(folder, dtype=dtype, device="cpu"), sd, cfg


def ids(T, seed=0, vocab=37):
    return np.random.default_rng(seed).integers(0, vocab, T)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_probe_matches_the_float64_reference(case, dtype):
    family, kw, lengths, chunk = CASES[case]
    model, sd, cfg = build(family, seed=case, dtype=dtype, **kw)
    assert isinstance(model, LinearAttentionModel) and model.architecture == family
    xs = [ids(T, seed=case * 10 + s) for s, T in enumerate(lengths)]
    tr = engine.run(model, xs, chunk=chunk)
    w = float64_weights(sd)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    expected_sites = {"in", "q", "k", "v", "state", "o", "mixer", "mid", "mlp", "out"} | (
        {"gate"} if family == "gla" else set()) | ({"g"} if kw.get("use_output_gate", True) else set())
    for s, x in enumerate(xs):
        ref = reference_lm(w, cfg, x)
        assert {n.split(".")[-1] for n in ref if n.startswith("layers.0.")} == expected_sites
        for name, want in ref.items():
            np.testing.assert_allclose(tr.array(name, s), want, atol=tol, rtol=tol, err_msg=f"{name} seq {s}")


@pytest.mark.parametrize("family", ["gla", "retnet"])
def test_recurrence_output_matches_fla_naive_functions(family):
    naive = load_fla_naive("gla" if family == "gla" else "retention")
    if naive is None:
        pytest.skip("fla-core is not installed")
    model, sd, cfg = build(family, seed=5, dtype=torch.float64, d=32, heads=4, kv_heads=2 if family == "gla" else None)
    c = model.config
    x = ids(130, 3)
    tr = engine.run(model, x, chunk=64)
    T = len(x)

    def heads(name, size):  # [T, width] -> [1, T, H, size], key/value heads repeated per group
        a = torch.tensor(tr[f"layers.1.{name}"]).reshape(T, -1, size)
        return a.repeat_interleave(c.num_heads // a.shape[1], 1)[None].float()

    q, k, v = heads("q", c.head_k), heads("k", c.head_k), heads("v", c.head_v)
    if family == "gla":
        o, _ = naive.naive_recurrent_gla(q, k, v, heads("gate", c.head_k))
    else:
        o = naive.naive_retention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    np.testing.assert_allclose(o[0].reshape(T, -1).double().numpy(), tr["layers.1.o"], atol=2e-5, rtol=2e-5)


def test_sub_chunks_and_chunks_give_the_same_result():
    model, _, _ = build("gla", seed=7, dtype=torch.float64)
    x = ids(2 * SUB + 17, 4)
    runs = [engine.run(model, x, chunk=c) for c in (7, SUB, 1000)]
    for other in runs[1:]:
        for name in runs[0].probes:
            np.testing.assert_allclose(other[name], runs[0][name], atol=1e-11, rtol=1e-11, err_msg=name)


# ======================================================================================
# implicit attention
# ======================================================================================


def _alpha_by_hand(q, k, log_a, i, j, K):
    """alpha_ij per head, one product at a time (float64)."""
    decay = np.ones_like(q[0])
    for m in range(j + 1, i + 1):
        decay = decay * np.exp(log_a[m])
    return (q[i] * K ** -0.5 * decay * k[j]).sum(-1)


@pytest.mark.parametrize("family", ["gla", "retnet"])
def test_implicit_attention_reproduces_the_recurrence_output(family):
    model, _, _ = build(family, seed=11, dtype=torch.float64, d=32, heads=4, kv_heads=2)
    c = model.config
    x = ids(150, 6)
    tr = engine.run(model, x, chunk=32)
    T = len(x)
    for layer in range(c.n_layer):
        def heads(name, size):
            a = torch.tensor(tr[f"layers.{layer}.{name}"]).reshape(T, -1, size)
            return a.repeat_interleave(c.num_heads // a.shape[1], 1)

        q, k, v = heads("q", c.head_k), heads("k", c.head_k), heads("v", c.head_v)
        log_a = heads("gate", c.head_k) if family == "gla" else model.log_decay()[:, None]
        o = torch.tensor(tr[f"layers.{layer}.o"]).reshape(T, c.num_heads, c.head_v)
        full = linear_attention(q, k, log_a, (0, T), (0, T), reduce=None)  # [T, T, H]
        np.testing.assert_allclose(torch.einsum("ijh,jhv->ihv", full, v), o, atol=1e-8, rtol=0)
        assert torch.all(full[torch.ones(T, T, dtype=torch.bool).triu(1)] == 0)  # nothing from the future
        # a sub-window: rows 40..100 against every column up to them, and a block inside
        rows = linear_attention(q, k, log_a, (40, 100), (0, 100), reduce=None)
        np.testing.assert_allclose(torch.einsum("ijh,jhv->ihv", rows, v[:100]), o[40:100], atol=1e-8, rtol=0)
        block = linear_attention(q, k, log_a, (40, 100), (30, 70), reduce=None)
        np.testing.assert_allclose(block, full[40:100, 30:70], atol=1e-12, rtol=1e-12)
        la = heads("gate", c.head_k).numpy() if family == "gla" else np.broadcast_to(
            model.log_decay().numpy()[:, None], (T, c.num_heads, c.head_k))
        for i, j in ((5, 0), (99, 41), (149, 148), (70, 70)):
            np.testing.assert_allclose(full[i, j], _alpha_by_hand(q.numpy(), k.numpy(), la, i, j, c.head_k),
                                       atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("family", ["gla", "retnet"])
def test_the_attn_probe_holds_the_window_mean_abs_over_heads(family):
    model, _, _ = build(family, seed=12, dtype=torch.float64)
    model.attention_window = ((20, 90), (10, 60))
    c = model.config
    xs = [ids(100, 7), ids(50, 8)]
    tr = engine.run(model, xs, chunk=32)
    for s, T in enumerate((100, 50)):
        def heads(name, size):
            a = torch.tensor(tr.array(f"layers.1.{name}", s)).reshape(T, -1, size)
            return a.repeat_interleave(c.num_heads // a.shape[1], 1)

        log_a = heads("gate", c.head_k) if family == "gla" else model.log_decay()[:, None]
        full = linear_attention(heads("q", c.head_k), heads("k", c.head_k), log_a, (0, T), (0, T), reduce=None)
        att = tr.array("layers.1.attn", s)
        assert att.shape == (T, 50)
        assert np.isnan(att[:20]).all() and np.isnan(att[90:]).all()
        hi = min(90, T)
        want = np.zeros((hi - 20, 50))
        cols = min(60, T) - 10
        want[:, :cols] = full[20:hi, 10:10 + cols].abs().mean(-1).numpy()
        np.testing.assert_allclose(att[20:hi], want, atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(attention_from_trace(tr, model, 1, (20, 90), (10, 60), sequence=s)[:hi - 20],
                                   want, atol=1e-12, rtol=1e-10)


def test_a_long_input_computes_only_the_window():
    model, _, _ = build("gla", seed=13)
    model.attention_window = ((2900, 2964), (2800, 2964))
    tr = engine.run(model, ids(3000, 9), probes="layers.0.attn")
    att = tr["layers.0.attn"]
    assert att.shape == (3000, 164) and np.isnan(att[:2900]).all() and np.isnan(att[2964:]).all()
    assert np.isfinite(att[2900:2964]).all() and (att[2900:2964, :100] > 0).all()
