"""Golden tests for RWKV-7: logits and the final state vs the ``rwkv`` package's CPU path (the
reference users run; skipped when it is not installed), every probe vs an independent float64
loop from the paper's equations (tests/rwkv7_reference.py), on random tiny configs (1 to 3
layers, 1 to 4 heads, batch up to 3, 1 to 300 steps with chunks of 32 and pieces of 16, so
chunk and piece boundaries are crossed); and the implicit attention reproducing the
recurrence's output.

Tolerances: vs ``rwkv`` (float32 both) 2e-5 absolute + relative on logits, final states and
token shifts (measured: ~7e-6); vs the float64 loop, float32 models within 5e-5 (measured
~3e-6 relative to the largest logits) and float64 models within 1e-10 (measured ~1e-14); the
attention identity in float64 within 1e-8 (it holds to ~1e-14), its entries vs explicit
products of transition matrices within 1e-12.
"""
import os

import numpy as np
import pytest
import torch

import engine
from engine.models.rwkv7 import Rwkv7Model
from engine.models.rwkv7_loading import load_rwkv7
from engine.models.rwkv7_scan import SUB, _piece_bounds, attention_from_trace, wkv7_pieces
from family_checks import assert_only_the_window_is_computed, assert_probes_match_reference
from rwkv7_reference import float64_weights, random_state_dict, reference_rwkv7

CHUNK = 32  # with pieces of SUB = 16: boundaries of both inside the tests' sequences

CASES = [
    # seed, vocab, channels, heads, layers, ffn, lengths
    (0, 37, 16, 2, 2, None, [1]),
    (1, 37, 16, 2, 2, None, [300, 129, 64]),
    (2, 50, 24, 3, 3, 40, [97, 5]),
    (3, 20, 8, 1, 1, 8, [150, 150]),
    (4, 30, 32, 4, 2, None, [41]),
]


def case_id(c):
    return f"C{c[2]}-H{c[3]}-L{c[4]}-B{len(c[6])}-T{max(c[6])}"


def model_for(sd, dtype=torch.float32, **kw):
    return load_rwkv7(sd, [], name="test", fmt="pth", dtype=dtype, device="cpu", **kw)


def state_dict_for(case, dtype=torch.float32):
    seed, vocab, C, heads, layers, ffn, _ = case
    return random_state_dict(seed, vocab=vocab, C=C, heads=heads, layers=layers, ffn=ffn, dtype=dtype)


def seqs_for(case):
    rng = np.random.default_rng(case[0])
    return [rng.integers(0, case[1], L) for L in case[6]]


@pytest.fixture(scope="module")
def rwkv_package():
    os.environ["RWKV_V7_ON"] = "1"  # read when rwkv.model is imported
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    return pytest.importorskip("rwkv.model")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_rwkv_package(case, rwkv_package, tmp_path):
    sd = state_dict_for(case)
    torch.save(sd, tmp_path / "m.pth")
    ref = rwkv_package.RWKV(str(tmp_path / "m"), strategy="cpu fp32")  # the package adds .pth
    model = engine.load(tmp_path / "m.pth", device="cpu")
    seqs = seqs_for(case)
    layers = case[4]
    trace = engine.run(model, seqs, probes=["logits", "layers.*.state", "layers.*.in", "layers.*.ffn_in"],
                       chunk=CHUNK)
    for s, ids in enumerate(seqs):
        logits, state = ref.forward([int(i) for i in ids], None, full_output=True)
        logits = logits.reshape(len(ids), -1)  # one token: the package returns [V]
        np.testing.assert_allclose(trace.array("logits", s), logits.numpy(), atol=2e-5, rtol=2e-5)
        for k in range(layers):  # the package's state: (x_prev, S, f_prev) per layer, no batch axis
            for site, part in (("in", 0), ("state", 1), ("ffn_in", 2)):
                np.testing.assert_allclose(trace.array(f"layers.{k}.{site}", s)[-1], state[3 * k + part].numpy(),
                                           atol=2e-5, rtol=2e-5, err_msg=f"layer {k} {site}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]], ids=case_id)
def test_every_probe_matches_the_float64_reference(case, dtype):
    sd = state_dict_for(case, torch.float64)
    model = model_for(sd, dtype)
    w = float64_weights(sd)
    seqs = seqs_for(case)
    trace = engine.run(model, seqs, chunk=CHUNK)
    tol = 5e-5 if dtype == torch.float32 else 1e-10
    assert_probes_match_reference(trace, seqs, lambda ids: reference_rwkv7(w, ids), dtype, tol)


def test_chunk_and_piece_sizes_do_not_change_the_result():
    sd = state_dict_for(CASES[1], torch.float64)
    model = model_for(sd, torch.float64)
    ids = seqs_for(CASES[1])[0]
    base = engine.run(model, ids, probes=["logits", "layers.*.state"], chunk=256)
    for chunk in (1, 7, 64):
        other = engine.run(model, ids, probes=["logits", "layers.*.state"], chunk=chunk)
        for name in base.probes:
            np.testing.assert_allclose(other[name], base[name], atol=1e-11, rtol=1e-11, err_msg=f"{chunk} {name}")


def test_pieces_match_a_step_by_step_recurrence_with_extreme_decays():
    """The chunked recurrence alone, from a non-zero state, with decays of 0, 1e-30 and 1e3 (an
    edit can set them): pieces end where the factors e^(+-sum log w) would get large, a zero
    decay gives exact zeros, nothing is NaN."""
    g = torch.Generator().manual_seed(3)
    B, H, n, N, Nv = 2, 3, 45, 5, 4
    S0 = torch.randn(B, H, Nv, N, generator=g, dtype=torch.float64)
    r, k = (torch.randn(B, H, n, N, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, n, Nv, generator=g, dtype=torch.float64)
    kk = torch.nn.functional.normalize(torch.randn(B, H, n, N, generator=g, dtype=torch.float64), dim=-1)
    a = torch.rand(B, H, n, N, generator=g, dtype=torch.float64)
    w = torch.rand(B, H, n, N, generator=g, dtype=torch.float64)
    w[0, 1, 10:12] = 0.0
    w[1, 0, 30, :2] = 1e-30
    w[1, 2, 20:26, 1] = 1e3  # grows (an edit can do that too): pieces end before e^(sum) gets large
    o, S, states = wkv7_pieces(S0, r, torch.log(w), k, v, -kk, kk * a, want_states=True)
    # a piece ends before a zero decay (10, 11) and where the sums spread past LOG_SPREAD (24: four
    # steps of log 1e3 after 20; 30: log 1e-30); a piece's own first decay may be anything
    assert _piece_bounds(torch.log(w), 16) == [(0, 10), (10, 11), (11, 24), (24, 30), (30, 45)]
    St = S0.clone()
    for t in range(n):
        St = (St * w[:, :, t, None, :] - (St @ kk[:, :, t, :, None]) * (kk * a)[:, :, t, None, :]
              + v[:, :, t, :, None] * k[:, :, t, None, :])
        torch.testing.assert_close(states[:, :, t], St, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(o[:, :, t], (St @ r[:, :, t, :, None])[..., 0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(S, St, atol=1e-12, rtol=1e-12)


def test_probe_specs_describe_shapes_and_dims():
    sd = random_state_dict(9, C=24, heads=3, layers=2, ffn=40)
    model = model_for(sd)
    specs = {s.name: s for s in model.probe_specs()}
    assert specs["layers.0.state"].shape == (3, 8, 8)
    assert specs["layers.0.state"].dims == ("token", "head", "value", "key")
    for site in ("in", "r", "w", "k", "kk", "a", "v", "g", "o", "att", "ffn_in", "ffn", "out"):
        assert specs[f"layers.1.{site}"].shape == (24,) and specs[f"layers.1.{site}"].dims == ("token", "unit")
        assert len(specs[f"layers.1.{site}"].description) > 20
    assert specs["layers.1.ffn_k"].shape == (40,)
    assert specs["logits"].shape == (37,) and specs["embed"].shape == (24,)
    assert specs["layers.0.attn"].shape == (256,) and specs["layers.0.attn"].dims == ("token", "key")
    model.attention_window = ((10, 20), (5, 45))
    assert {s.name: s for s in model.probe_specs()}["layers.0.attn"].shape == (40,)


def test_state_is_computed_only_when_asked_for_and_changes_nothing_else():
    model = model_for(random_state_dict(10))
    ids = np.arange(70) % 37
    a = engine.run(model, ids, probes=["layers.*.o", "logits"], chunk=CHUNK)
    b = engine.run(model, ids, probes=["layers.*.o", "logits", "layers.*.state"], chunk=CHUNK)
    assert a.probes == ["layers.0.o", "layers.1.o", "logits"]
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name])
    assert b["layers.0.state"].shape == (70, 2, 8, 8)


def test_half_precision_runs_the_recurrence_in_float32():
    sd = random_state_dict(11)
    half = model_for(sd, torch.bfloat16)
    assert half.scan_dtype == torch.float32
    ids = np.arange(50) % 37
    tr = engine.run(half, ids, probes=["logits", "layers.*.state"])
    full = engine.run(model_for(sd), ids, probes="logits")
    assert np.abs(tr["logits"] - full["logits"]).max() < 0.1 * np.abs(full["logits"]).max()


# -- implicit attention ------------------------------------------------------------------


def alpha_by_products(trace, layer, i, j, heads):
    """alpha_ij per head written out: k_j A_(j+1) ... A_i r_i^T, A_t = diag(w_t) - kk_t^T (kk_t a_t)."""
    arr = {s: torch.tensor(trace[f"layers.{layer}.{s}"]) for s in ("r", "w", "k", "kk", "a")}
    C = arr["r"].shape[1]
    N = C // heads
    out = torch.zeros(heads, dtype=torch.float64)
    if j > i:
        return out
    for h in range(heads):
        sl = slice(h * N, (h + 1) * N)
        row = arr["k"][j, sl]
        for m in range(j + 1, i + 1):
            kk = arr["kk"][m, sl]
            A = torch.diag(arr["w"][m, sl]) - torch.outer(kk, kk * arr["a"][m, sl])
            row = row @ A
        out[h] = row @ arr["r"][i, sl]
    return out


@pytest.mark.parametrize("T", [1, 17, 70])
def test_attention_reproduces_the_recurrence_output_in_float64(T):
    sd = random_state_dict(12, C=24, heads=3, layers=2, dtype=torch.float64)
    model = model_for(sd, torch.float64)
    trace = engine.run(model, np.random.default_rng(3).integers(0, 37, T), chunk=CHUNK)
    for k in range(2):
        alpha = attention_from_trace(trace, k, (0, T), (0, T), reduce=None)
        assert alpha.dtype == np.float64 and alpha.shape == (T, T, 3)
        assert np.all(np.triu(alpha.transpose(2, 0, 1), k=1) == 0)  # causal
        v = trace[f"layers.{k}.v"].reshape(T, 3, 8)
        o = np.einsum("ijh,jhn->ihn", alpha, v).reshape(T, 24)
        np.testing.assert_allclose(o, trace[f"layers.{k}.o"], atol=1e-8, rtol=1e-8)
        for i, j in [(0, 0), (T - 1, 0), (T - 1, T // 2), (T // 2, T // 3)]:
            np.testing.assert_allclose(alpha[i, j], alpha_by_products(trace, k, i, j, 3), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("rows,cols", [((0, 90), (0, 90)), ((50, 90), (20, 70)), ((60, 90), (0, 13)),
                                       ((5, 40), (30, 90)), ((33, 34), (0, 90)), ((80, 120), (70, 130))])
def test_a_window_is_the_same_part_of_the_full_matrix_and_sums_to_the_output(rows, cols):
    sd = random_state_dict(13, layers=1, dtype=torch.float64)
    trace = engine.run(model_for(sd, torch.float64), np.random.default_rng(4).integers(0, 37, 90), chunk=CHUNK)
    full = attention_from_trace(trace, 0, (0, 90), (0, 90), reduce=None)
    part = attention_from_trace(trace, 0, rows, cols, reduce=None)
    assert part.shape == (rows[1] - rows[0], cols[1] - cols[0], 2)
    r1, c1 = min(rows[1], 90), min(cols[1], 90)
    np.testing.assert_allclose(part[:r1 - rows[0], :c1 - cols[0]], full[rows[0]:r1, cols[0]:c1], atol=1e-13, rtol=1e-10)
    assert np.all(part[r1 - rows[0]:] == 0) and np.all(part[:, c1 - cols[0]:] == 0)
    if cols == (0, 90):  # a sub-window of rows with every column: still the whole output
        v = trace["layers.0.v"].reshape(90, 2, 8)
        o = np.einsum("ijh,jhn->ihn", part[:r1 - rows[0]], v).reshape(-1, 16)
        np.testing.assert_allclose(o, trace["layers.0.o"][rows[0]:r1], atol=1e-8, rtol=1e-8)


def test_attn_probe_is_the_mean_over_heads_of_abs_alpha_in_the_window():
    model = model_for(random_state_dict(14, C=24, heads=3))
    model.attention_window = ((20, 60), (10, 50))
    seqs = [np.random.default_rng(5).integers(0, 37, 80), np.random.default_rng(6).integers(0, 37, 45)]
    trace = engine.run(model, seqs, chunk=CHUNK)
    for s, L in enumerate([80, 45]):
        att = trace.array("layers.1.attn", s)
        assert att.shape == (L, 40)
        assert np.all(np.isnan(att[:20])) and np.all(np.isnan(att[60:]))
        hi = min(60, L)
        alpha = attention_from_trace(trace, 1, (20, hi), (10, 50), sequence=s, reduce=None)
        np.testing.assert_allclose(att[20:hi], np.abs(alpha).mean(-1), atol=1e-6, rtol=1e-5)
        assert np.all(att[20:hi][np.triu_indices(hi - 20, k=11, m=40)] == 0)  # key j > row i


def test_a_long_input_never_costs_t_squared(monkeypatch):
    """Only the window's columns are carried, from its first column to its last row."""
    import engine.models.rwkv7_scan as mod

    model = model_for(random_state_dict(15, layers=1))
    steps = []
    real = mod.wkv7_pieces

    def counting(S, r, *args, **kw):
        steps.append((r.shape[2], S.shape[2]))  # steps and values carried per call
        return real(S, r, *args, **kw)

    monkeypatch.setattr(mod, "wkv7_pieces", counting)
    assert_only_the_window_is_computed(model, 3000)
    window = [n for n, width in steps if width == 16]  # the layer's own calls carry N = 8 values
    assert sum(window) == 2916 - 2890


def test_attention_follows_edited_decays_keys_and_rates():
    """The attention is built from the r, w, k, kk and a probes, so edits to them are in it."""
    from engine import Intervention, Span

    model = model_for(random_state_dict(16, layers=1, dtype=torch.float64), torch.float64)
    T = 60
    ivs = [Intervention("layers.0.w", "scale", 0.2, positions=Span(10, 30), units=[1, 2, 3]),
           Intervention("layers.0.k", "add", 2.0, positions=[15, 40]),
           Intervention("layers.0.a", "set", 1.0, positions=Span(20, 25)),
           Intervention("layers.0.kk", "zero", positions=[33])]
    trace = engine.run(model, np.random.default_rng(8).integers(0, 37, T), interventions=ivs, chunk=CHUNK)
    alpha = attention_from_trace(trace, 0, (0, T), (0, T), reduce=None)
    o = np.einsum("ijh,jhn->ihn", alpha, trace["layers.0.v"].reshape(T, 2, 8)).reshape(T, 16)
    np.testing.assert_allclose(o, trace["layers.0.o"], atol=1e-8, rtol=1e-8)


def test_a_config_built_model_equals_the_loaded_one():
    from engine.models.rwkv7 import Rwkv7Config

    sd = random_state_dict(17, C=16, heads=4, layers=2)
    cfg = Rwkv7Config(d_model=16, n_layer=2, vocab_size=37, head_size=4, d_ffn=64, d_decay=8, d_aaa=6, d_mv=4,
                      d_gate=10)
    ids = np.arange(40) % 37
    a = engine.run(Rwkv7Model(cfg, sd), ids, probes="logits")
    b = engine.run(model_for(sd), ids, probes="logits")
    np.testing.assert_array_equal(a["logits"], b["logits"])
    assert SUB == 16
