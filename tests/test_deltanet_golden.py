"""Golden tests for DeltaNet (fla ``delta_net`` layout): logits and every probe (the per-step
state included) vs an independent float64 sequential loop of the recurrent equations
(tests/deltanet_reference.py) on random tiny configs; the delta-rule readout vs fla's own
``delta_rule_recurrence`` (``fla/ops/delta_rule/naive.py``, loaded by path when fla-core is
installed); the implicit attention vs its product form, and reproducing the readout.

There is no ``transformers`` DeltaNet, and fla's model classes do not run on a CPU.

Tolerances: float64 models vs the float64 reference within 1e-10 (the chunked solve agrees
to ~1e-14); float32 models within 5e-5 absolute + relative (the triangular solve and the
state sums in float32); vs fla's naive recurrence (float32 inside) 1e-5; the attention
identity sum_j alpha_ij v_j = o_i in float64 within 1e-8 (it holds to ~1e-15).  Chunks are
short and sequences up to 300 steps long, so engine chunks and 64-step sub-chunks are crossed.
"""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deltanet_reference import (float64_weights, fla_config, fla_gated_config, fla_state_dict, reference_attention,
                                reference_deltanet, write_fla_folder)
import engine
from engine.models.deltanet import DeltaNetModel
from engine.models.deltanet_scan import delta_rule_attention, delta_rule_chunk


def build(tmp_path, seed=0, dtype=torch.float64, conv_bias=False, gated=False, **cfg):
    """An fla folder with random weights (DeltaNet, or gated DeltaNet with ``gated``), loaded;
    returns (model, config dict, float64 weights)."""
    small = {"hidden_size": 16, "num_heads": 2, "num_hidden_layers": 2, "vocab_size": 29, "intermediate_size": 24}
    config = fla_gated_config(**{**small, "head_dim": 8, **cfg}) if gated else fla_config(**{**small, **cfg})
    sd = fla_state_dict(config, seed, conv_bias=conv_bias)
    folder = write_fla_folder(Path(tmp_path) / f"dn{seed}", config, sd)
    model = engine.load(folder, device="cpu", dtype=dtype)
    assert isinstance(model, DeltaNetModel)
    return model, config, float64_weights(sd)


CASES = [
    # seed, config, conv_bias, lengths
    (0, {}, False, [1]),
    (1, {}, False, [300, 129, 64]),
    (2, {"use_gate": True, "num_heads": 4, "hidden_size": 32, "num_hidden_layers": 3}, True, [97, 5]),
    (3, {"use_short_conv": False, "use_beta": False, "expand_v": 2}, False, [150, 150]),
    (4, {"qk_activation": "elu", "qk_norm": "sum", "conv_size": 2, "tie_word_embeddings": True}, False, [70]),
    (5, {"qk_activation": "relu", "expand_k": 0.5, "num_heads": 1}, False, [66, 3]),
]
GATED_CASES = [
    # seed, gated config, conv_bias, lengths
    (10, {}, False, [300, 77]),
    (11, {"num_v_heads": 4, "expand_v": 1.0, "use_gate": False}, True, [150]),
    (12, {"allow_neg_eigval": True, "use_short_conv": False, "num_heads": 1, "head_dim": 12}, False, [1, 65]),
]


def case_id(c):
    return ("gated-" if len(c) > 4 else "") + f"s{c[0]}-" + "-".join(f"{k}={v}" for k, v in c[1].items()) \
        + f"-T{max(c[3])}-B{len(c[3])}"


@pytest.mark.parametrize("dtype,tol,chunk", [(torch.float64, 1e-10, 48), (torch.float64, 1e-10, 160),
                                             (torch.float32, 5e-5, 256)], ids=["f64-chunk48", "f64-chunk160", "f32"])
@pytest.mark.parametrize("case", CASES + [(*c, "gated") for c in GATED_CASES], ids=case_id)
def test_every_probe_matches_the_float64_reference(tmp_path, case, dtype, tol, chunk):
    """chunk 160: sub-chunks of 64, 64 and 32 steps inside each engine chunk."""
    seed, cfg, conv_bias, lengths = case[:4]
    model, config, w = build(tmp_path, seed, dtype, conv_bias, gated=len(case) > 4, **cfg)
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 29, L) for L in lengths]
    probes = [s.name for s in model.probe_specs() if s.site != "attn"]
    trace = engine.run(model, seqs, probes=probes, chunk=chunk)
    for s, ids in enumerate(seqs):
        ref = reference_deltanet(w, config, ids, conv_bias=conv_bias)
        assert set(ref) == set(probes)
        for name, expected in ref.items():
            got = trace.array(name, s)
            np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=tol, rtol=tol,
                                       err_msg=f"{name} (sequence {s})")


def test_the_state_probe_has_its_declared_shape(tmp_path):
    model, _, _ = build(tmp_path, 6, num_heads=4, hidden_size=16, expand_v=2)
    tr = engine.run(model, np.arange(10), probes="layers.0.state")
    assert tr["layers.0.state"].shape == (10, 4, 4, 8)
    spec = {s.name: s for s in model.probe_specs()}["layers.0.state"]
    assert spec.shape == (4, 4, 8) and spec.dims == ("token", "head", "key", "value")


def _load_fla_naive(op="delta_rule"):
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "ops" / op / "naive.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location(f"fla_{op}_naive", path)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)  # needs einops only
    except ImportError:
        return None
    return mod


def test_readout_matches_fla_naive_delta_rule_recurrence(tmp_path):
    naive = _load_fla_naive()
    if naive is None:
        pytest.skip("fla-core (fla/ops/delta_rule/naive.py) is not installed")
    model, _, _ = build(tmp_path, 7, dtype=torch.float32, num_heads=4, hidden_size=32, use_gate=True)
    ids = np.random.default_rng(7).integers(0, 29, 200)
    tr = engine.run(model, ids, probes=["layers.1.q", "layers.1.k", "layers.1.v", "layers.1.beta", "layers.1.o",
                                        "layers.1.state"], chunk=64)
    T, H, d = 200, 4, 8
    heads = lambda name: torch.tensor(tr[name]).view(T, H, d).permute(1, 0, 2)[None]  # noqa: E731  [1, H, T, d]
    o, S = naive.delta_rule_recurrence(heads("layers.1.q"), heads("layers.1.k"), heads("layers.1.v"),
                                       torch.tensor(tr["layers.1.beta"]).T[None], output_final_state=True)
    np.testing.assert_allclose(o[0].permute(1, 0, 2).reshape(T, H * d).numpy(), tr["layers.1.o"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(S[0].numpy(), tr["layers.1.state"][-1], atol=1e-5, rtol=1e-5)


def test_gated_readout_matches_fla_naive_gated_delta_rule(tmp_path):
    naive = _load_fla_naive("gated_delta_rule")
    if naive is None:
        pytest.skip("fla-core (fla/ops/gated_delta_rule/naive.py) is not installed")
    model, _, _ = build(tmp_path, 13, dtype=torch.float32, gated=True, num_v_heads=4, hidden_size=32)
    ids = np.random.default_rng(13).integers(0, 29, 200)
    tr = engine.run(model, ids, probes=["layers.1.*"], chunk=64)
    T, H, HV, dk, dv = 200, 2, 4, 8, 16
    qk = lambda name: torch.tensor(tr[name]).view(1, T, H, dk).repeat_interleave(HV // H, dim=2)  # noqa: E731
    o, S = naive.naive_recurrent_gated_delta_rule(qk("layers.1.q"), qk("layers.1.k"),
                                                  torch.tensor(tr["layers.1.v"]).view(1, T, HV, dv),
                                                  torch.tensor(tr["layers.1.beta"])[None],
                                                  torch.log(torch.tensor(tr["layers.1.decay"]))[None],
                                                  output_final_state=True)
    np.testing.assert_allclose(o[0].reshape(T, HV * dv).numpy(), tr["layers.1.o"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(S[0].numpy(), tr["layers.1.state"][-1], atol=1e-5, rtol=1e-5)


def test_chunked_delta_rule_equals_its_recurrence_from_a_nonzero_state():
    g = torch.Generator().manual_seed(0)
    B, H, n, dk, dv = 2, 3, 40, 5, 4
    q, k = torch.randn(B, H, n, dk, generator=g, dtype=torch.float64), torch.randn(B, H, n, dk, generator=g, dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True)
    v = torch.randn(B, H, n, dv, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, n, generator=g, dtype=torch.float64)
    S0 = torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64)
    o, _, S = delta_rule_chunk(q, k, v, beta, S0)
    St = S0.clone()
    for t in range(n):
        kt, bt = k[:, :, t, :, None], beta[:, :, t, None, None]
        St = St - bt * kt @ (kt.transpose(-1, -2) @ St) + bt * kt @ v[:, :, t, None, :]
        torch.testing.assert_close(o[:, :, t], (q[:, :, t, None, :] @ St)[:, :, 0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(S, St, atol=1e-12, rtol=1e-12)


# -- implicit attention ------------------------------------------------------------------------


def _value_heads(tr, k, T, H, HV):
    q, kk = (np.repeat(tr[f"layers.{k}.{s}"].reshape(T, H, -1), HV // H, axis=1) for s in ("q", "k"))
    decay = tr.arrays.get(f"layers.{k}.decay")
    return q, kk, tr[f"layers.{k}.beta"], tr[f"layers.{k}.v"].reshape(T, HV, -1), decay


def _alpha(q, kk, beta, decay, rows, cols):
    g = None if decay is None else torch.log(torch.tensor(decay))
    return delta_rule_attention(torch.tensor(q) / math.sqrt(q.shape[-1]), torch.tensor(kk), torch.tensor(beta),
                                rows, cols, g).numpy()


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize("T", [40, 150])
def test_implicit_attention_reproduces_the_readout_in_float64(tmp_path, T, gated):
    cfg = {"num_v_heads": 4, "use_gate": True} if gated else {"use_gate": True}
    model, _, _ = build(tmp_path, 8, gated=gated, **cfg)
    H, HV = 2, 4 if gated else 2
    ids = np.random.default_rng(8).integers(0, 29, T)
    tr = engine.run(model, ids, probes="layers.*", chunk=32)
    for k in range(2):
        q, kk, beta, v, decay = _value_heads(tr, k, T, H, HV)
        alpha = _alpha(q, kk, beta, decay, (0, T), (0, T))
        assert np.all(alpha[np.triu_indices(T, 1)] == 0)
        o = np.einsum("ijh,jhd->ihd", alpha, v).reshape(T, -1)
        np.testing.assert_allclose(o, tr[f"layers.{k}.o"], atol=1e-8, rtol=0)
        if T == 40:  # the product form, written out
            np.testing.assert_allclose(alpha, reference_attention(q, kk, beta, decay), atol=1e-12, rtol=0)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_a_sub_window_is_the_same_block_and_the_probe_its_mean_magnitude(tmp_path, gated):
    model, _, _ = build(tmp_path, 9, gated=gated)
    T, H = 130, 2
    ids = np.random.default_rng(9).integers(0, 29, T)
    model.attention_window = ((70, 120), (30, 100))
    tr = engine.run(model, ids, probes="layers.1.*", chunk=32)
    q, kk, beta, v, decay = _value_heads(tr, 1, T, H, H)
    full = _alpha(q, kk, beta, decay, (0, T), (0, T))
    sub = _alpha(q, kk, beta, decay, (70, 120), (30, 100))
    np.testing.assert_allclose(sub, full[70:120, 30:100], atol=1e-12, rtol=0)
    # the rows' readout: the window's columns plus the rest of the columns
    o = np.einsum("ijh,jhd->ihd", sub, v[30:100]) + np.einsum("ijh,jhd->ihd", full[70:120, :30], v[:30]) \
        + np.einsum("ijh,jhd->ihd", full[70:120, 100:], v[100:])
    np.testing.assert_allclose(o.reshape(50, -1), tr["layers.1.o"][70:120], atol=1e-8, rtol=0)
    attn = tr["layers.1.attn"]
    assert attn.shape == (T, 70)
    assert np.all(np.isnan(attn[:70])) and np.all(np.isnan(attn[120:]))
    np.testing.assert_allclose(attn[70:120], np.abs(sub).mean(-1), atol=1e-14, rtol=0)


def test_attention_window_past_the_end_and_columns_after_the_rows(tmp_path):
    model, _, _ = build(tmp_path, 10)
    model.attention_window = ((5, 500), (20, 400))
    tr = engine.run(model, np.arange(25) % 29, probes="layers.0.attn")
    a = tr["layers.0.attn"]
    assert a.shape == (25, 380)
    assert np.all(np.isnan(a[:5]))
    assert np.all(a[5:20] == 0)  # every column is after these rows
    assert np.all(a[20:, 5:] == 0) and np.all(a[20:, 0] > 0)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_half_precision_runs_close_to_float32(tmp_path, gated):
    """bfloat16 weights and activations; the delta rule itself runs in float32.  Loose: 0.1."""
    model, _, _ = build(tmp_path, 14, dtype=torch.bfloat16, gated=gated)
    ids = np.random.default_rng(14).integers(0, 29, 100)
    tr = engine.run(model, ids, chunk=64)
    ref = engine.run(model.to(dtype=torch.float32), ids, chunk=64)
    assert np.isfinite(tr["layers.1.attn"][:100, :100]).all()
    np.testing.assert_allclose(tr["logits"], ref["logits"], atol=0.1 * np.abs(ref["logits"]).max())
