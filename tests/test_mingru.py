"""minGRU / minLSTM: every probe vs an independent float64 sequential loop (written here from
the paper's equations), logits vs the ``minGRU-pytorch`` package's ``minLM`` (its parallel
log-space scan), the implicit attention reproducing h, interventions inside the recurrence,
exact cached re-runs, and loading the package's state dicts.

Tolerances: vs the package 5e-5 (its log-space scan differs from a sequential one by ~2e-6);
vs the float64 loop 2e-5 (float32 models) and 1e-10 (float64); attention identity 1e-8.
"""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, LoadError, Span
from engine.models.mingru import MinRNNConfig, MinRNNModel, canonical_weight_shapes, gated_attention
from engine.models.mamba import numba_available
from family_checks import assert_typing_sessions_match_full_runs

SCANS = ["torch"] + (["numba"] if numba_available() else [])


# -- the float64 reference ---------------------------------------------------------------


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _rms(x, w):
    return w * x / np.sqrt((x ** 2).mean() + np.finfo(np.float64).eps)


def _gelu(v):
    from math import erf

    return 0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2)))


def reference(w, ids, cfg: MinRNNConfig, overrides=None, state0=None, start=None):
    """One sequence; ``w`` float64 arrays (minLM names).  overrides {(probe, t): f}; state0
    {layer: (h, conv buffer [K-1, d])}; start: layer-0 input rows instead of the embedding."""
    overrides, state0 = overrides or {}, state0 or {}
    rec = {}
    T = len(ids)

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    xs = [site("embed", t, w["token_emb.weight"][i]) for t, i in enumerate(ids)] if start is None else list(start)
    di = cfg.d_inner
    for k in range(cfg.n_layer):
        p = f"layers.{k}."
        nm = lambda s: f"layers.{k}.{s}"  # noqa: E731
        h, buf = state0.get(k, (np.zeros(di), np.zeros((max(cfg.conv_kernel - 1, 0), cfg.d_model))))
        hist = [r.copy() for r in buf]
        outs = []
        for t in range(T):
            x = xs[t]
            if cfg.conv_kernel:
                K = cfg.conv_kernel
                win = (hist[-(K - 1):] if K > 1 else []) + [x]
                dw = w[p + "0.net.0.weight"][:, 0, :]
                c = sum(dw[:, j] * win[j] for j in range(K)) + w[p + "0.net.0.bias"]
                c = site(nm("conv"), t, w[p + "0.net.1.weight"][:, :, 0] @ c + w[p + "0.net.1.bias"])
                hist.append(x)
                x = site(nm("after_conv"), t, x + c)
            n = _rms(x, w[p + "1.weight"])
            if cfg.cell == "mingru":
                pr = w[p + "2.to_hidden_and_gate.weight"] @ n
                ht = site(nm("h_tilde"), t, np.where(pr[:di] >= 0, pr[:di] + 0.5, _sig(pr[:di])))
                z = site(nm("gate_z"), t, _sig(pr[di:]))
                h = site(nm("h"), t, (1 - z) * h + z * ht)
            else:
                pr = w[p + "2.to_hidden_and_f_i_gate.weight"] @ n
                ht = site(nm("h_tilde"), t, np.where(pr[:di] >= 0, pr[:di] + 0.5, _sig(pr[:di])))
                f, i = _sig(pr[di:2 * di]), _sig(pr[2 * di:])
                fp = site(nm("gate_f"), t, f / (f + i))
                ip = site(nm("gate_i"), t, i / (f + i))
                h = site(nm("h"), t, fp * h + ip * ht)
            y = site(nm("mixer"), t, w[p + "2.to_out.weight"] @ h if cfg.proj_out else h.copy())
            x = site(nm("mid"), t, x + y)
            ff = w[p + "4.2.weight"] @ _gelu(w[p + "4.0.weight"] @ _rms(x, w[p + "3.weight"]) + w[p + "4.0.bias"]) \
                + w[p + "4.2.bias"]
            outs.append(site(nm("out"), t, x + site(nm("mlp"), t, ff)))
        xs = outs
    for t in range(T):
        site("logits", t, w["to_logits.weight"] @ _rms(xs[t], w["norm.weight"]))
    return {k: np.stack(v) for k, v in rec.items()}


def make(cell="mingru", d=12, layers=2, vocab=23, expansion=1.5, conv=0, seed=0, dtype=torch.float32, scan="torch"):
    torch.manual_seed(seed)
    di = int(d * expansion)
    cfg = MinRNNConfig(cell=cell, d_model=d, n_layer=layers, vocab_size=vocab, d_inner=di, ff_inner=4 * d,
                       proj_out=expansion != 1, conv_kernel=conv)
    w = {k: torch.randn(s, dtype=torch.float64) * (0.6 if k.endswith("bias") else 0.4)
         for k, s in canonical_weight_shapes(cfg).items()}
    for k in w:
        if k.endswith(("1.weight", "3.weight")) or k == "norm.weight":
            w[k] = 1 + 0.1 * torch.randn_like(w[k])
    return MinRNNModel(cfg, w, dtype=dtype, scan=scan), {k: v.numpy() for k, v in w.items()}, cfg


CASES = [("mingru", 1.5, 0), ("mingru", 1, 3), ("minlstm", 1.5, 0), ("minlstm", 1, 4)]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-x{c[1]}-conv{c[2]}")
def test_every_probe_matches_the_float64_reference(case, dtype, scan):
    cell, expansion, conv = case
    model, w, cfg = make(cell, expansion=expansion, conv=conv, dtype=dtype, scan=scan)
    seqs = [np.random.default_rng(1).integers(0, 23, 70), np.random.default_rng(2).integers(0, 23, 9)]
    trace = engine.run(model, seqs, chunk=16)
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    for s, ids in enumerate(seqs):
        ref = reference(w, ids, cfg)
        assert set(ref) == {n for n in trace.probes if not n.endswith(".attn")}
        for name, expected in ref.items():
            np.testing.assert_allclose(trace.array(name, s), expected, atol=tol, rtol=tol, err_msg=name)


@pytest.mark.parametrize("use_lstm", [False, True], ids=["minGRU", "minLSTM"])
@pytest.mark.parametrize("conv", [False, True], ids=["noconv", "conv"])
def test_matches_the_minGRU_pytorch_package(use_lstm, conv, tmp_path):
    pkg = pytest.importorskip("minGRU_pytorch.minLM")
    torch.manual_seed(3)
    lm = pkg.minLM(num_tokens=31, dim=16, depth=2, use_lstm=use_lstm, enable_conv=conv).eval()
    torch.save(lm.state_dict(), tmp_path / "minlm.pt")  # the file a user of the package has
    model = engine.load(tmp_path / "minlm.pt", device="cpu")
    assert model.architecture == ("minlstm" if use_lstm else "mingru")
    seqs = [np.random.default_rng(4).integers(0, 31, L) for L in (300, 77)]
    trace = engine.run(model, seqs, probes="logits", chunk=64)
    for s, ids in enumerate(seqs):
        with torch.no_grad():
            ref = lm(torch.tensor(ids[None]))[0]
        torch.testing.assert_close(torch.tensor(trace.array("logits", s)), ref, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_attention_reproduces_h_in_float64(cell):
    model, w, cfg = make(cell, dtype=torch.float64)
    ids = np.random.default_rng(5).integers(0, 23, 60)
    trace = engine.run(model, ids, chunk=16)
    for k in range(2):
        if cell == "mingru":
            z = trace[f"layers.{k}.gate_z"]
            a, wt = 1 - z, z
        else:
            a, wt = trace[f"layers.{k}.gate_f"], trace[f"layers.{k}.gate_i"]
        alpha = gated_attention(torch.tensor(a), torch.tensor(wt), (0, 60), (0, 60), reduce=None)
        h = torch.einsum("ijc,jc->ic", alpha, torch.tensor(trace[f"layers.{k}.h_tilde"]))
        torch.testing.assert_close(h, torch.tensor(trace[f"layers.{k}.h"]), atol=1e-8, rtol=1e-8)
        for rows, cols in [((20, 50), (5, 40)), ((40, 60), (0, 10)), ((3, 30), (25, 60))]:
            part = gated_attention(torch.tensor(a), torch.tensor(wt), rows, cols, reduce=None)
            torch.testing.assert_close(part, alpha[rows[0]:rows[1], cols[0]:cols[1]], atol=1e-14, rtol=1e-12)
    model.attention_window = ((10, 40), (0, 30))
    tr = engine.run(model, ids, chunk=16, probes="layers.1.attn")
    att = tr["layers.1.attn"]
    assert np.isnan(att[:10]).all() and np.isnan(att[40:]).all()
    np.testing.assert_allclose(att[10:40], alpha[10:40, 0:30].mean(-1).numpy(), atol=1e-14)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("site", ["conv", "after_conv", "h_tilde", "gate_f", "gate_i", "h", "mixer", "mid", "mlp",
                                  "out"])
def test_steps_before_t_are_bit_identical_and_later_steps_change(site, scan):
    model, w, cfg = make("minlstm", conv=3, scan=scan)
    x = np.random.default_rng(6).integers(0, 23, 70)
    t = 27
    clean = engine.run(model, x, chunk=16)
    edited = engine.run(model, x, chunk=16, interventions=[Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t))])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4


def test_editing_the_gate_and_the_state_matches_the_reference():
    model, w, cfg = make("mingru", dtype=torch.float64)
    x = np.random.default_rng(7).integers(0, 23, 40)
    ivs = [Intervention("layers.0.gate_z", "set", 1.0, positions=[12], units=[0, 4]),
           Intervention("layers.1.h", "zero", positions=Span(20, 23), units=[2])]
    tr = engine.run(model, x, interventions=ivs, chunk=8)

    def gate(v):
        v[[0, 4]] = 1.0
        return v

    def zero(v):
        v[2] = 0
        return v

    ov = {("layers.0.gate_z", 12): gate, **{("layers.1.h", t): zero for t in range(20, 23)}}
    ref = reference(w, x, cfg, overrides=ov)
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_patched_h_equals_running_the_suffix_from_that_state():
    model, w, cfg = make("minlstm", conv=3, dtype=torch.float64)
    a, b = (np.random.default_rng(s).integers(0, 23, 50) for s in (8, 9))
    t = 21
    src = engine.run(model, a, chunk=16)
    tr = engine.run(model, b, chunk=16, interventions=[Intervention("layers.0.h", "patch", src["layers.0.h"], positions=[t])])
    state0 = {0: (src["layers.0.h"][t], tr["embed"][t - 1:t + 1])}  # conv buffer: layer-0 inputs t-1, t
    ref = reference(w, b[t + 1:], MinRNNConfig(**{**cfg.__dict__, "n_layer": 1}), state0=state0, start=tr["embed"][t + 1:])
    for site in ("h", "out", "conv"):
        np.testing.assert_allclose(tr[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("scan", SCANS)
def test_cached_reruns_equal_full_reruns(scan):
    assert_typing_sessions_match_full_runs(make("mingru", conv=3, scan=scan)[0], vocab=23)


def test_seqscope_layout_round_trip_and_bad_files(tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.loading import save_model

    model, w, cfg = make("minlstm", conv=4)
    p = save_model(model, tmp_path / "m.safetensors")
    again = engine.load(p, device="cpu")
    assert again.config == cfg and again.info()["architecture"] == "minlstm"
    ids = np.arange(30) % 23
    np.testing.assert_array_equal(engine.run(again, ids)["logits"], engine.run(model, ids)["logits"])
    sd = load_file(p)
    sd.pop("layers.1.4.2.bias")
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(LoadError, match=r"missing layers\.1\.4\.2\.bias"):
        engine.load(tmp_path / "bad.safetensors", device="cpu")
    with pytest.raises(Exception, match="computed from the gates"):
        engine.run(model, ids, interventions=[Intervention("layers.0.attn", "zero")])
