"""An independent float64 xLSTM (mLSTM blocks): the recurrent equations of the paper (Beck et al.
2024, with the stabiliser of its appendix, as ``transformers``' ``mlstm_recurrent_step_native``
runs them), one token at a time, in NumPy, written without any engine code.

``overrides`` lets a test edit a value at a site and step by hand: ``{(probe, t): f}`` with probe
``layers.{k}.{site}``; ``f(value) -> value`` (``state`` and ``normalizer`` are edited
unstabilised, [heads, d_qk, d_v] and [heads, d_qk]).  ``state0`` gives layers a starting state
``{k: (C, n, m)}`` (unstabilised C [heads, d_qk, d_v], n [heads, d_qk], m [heads]).
"""
from __future__ import annotations

import numpy as np


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def _softcap(x, cap):
    return x if cap is None else cap * np.tanh(x / cap)


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_xlstm(w: dict, ids, n_layer: int, heads: int, *, norm_eps=1e-6, eps=1e-6, gate_cap=15.0,
                    logit_cap=30.0, overrides=None, state0=None, start_layer_input=None):
    """One sequence.  ``w``: float64 arrays with ``xLSTMForCausalLM`` names.  Returns
    ``{probe: [T, ...]}`` for embed, every layer site but attn, and logits."""
    overrides = overrides or {}
    state0 = state0 or {}
    rec: dict[str, list] = {}
    T = len(ids)

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    def lin(x, name):
        y = w[name + ".weight"] @ x
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rms(x, name):
        y = x / np.sqrt(np.mean(x * x) + norm_eps) * w[name + ".weight"]
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def head_layernorm(h, name):
        hh = h.reshape(heads, -1)
        mu = hh.mean(-1, keepdims=True)
        var = ((hh - mu) ** 2).mean(-1, keepdims=True)
        y = ((hh - mu) / np.sqrt(var + norm_eps)).reshape(-1) * w[name + ".weight"]
        return y + w[name + ".bias"] if name + ".bias" in w else y

    emb = w["backbone.embeddings.weight"]
    xs = [start_layer_input[t] for t in range(T)] if start_layer_input is not None else \
        [site("embed", t, emb[int(i)].copy()) for t, i in enumerate(ids)]
    for k in range(n_layer):
        p = f"backbone.blocks.{k}."
        m_ = p + "mlstm_layer."
        L = f"layers.{k}."
        dk = w[m_ + "q.weight"].shape[0] // heads
        dv = w[m_ + "v.weight"].shape[0] // heads
        if k in state0:
            Cu, nu, m = (np.array(a, dtype=np.float64) for a in state0[k])
            C, n = Cu * np.exp(-m)[:, None, None], nu * np.exp(-m)[:, None]
        else:
            C, n, m = np.zeros((heads, dk, dv)), np.zeros((heads, dk)), np.zeros(heads)
        outs = []
        for t, x in enumerate(xs):
            u = site(L + "in", t, rms(x, p + "norm_mlstm"))
            q = site(L + "q", t, lin(u, m_ + "q"))
            kk = site(L + "k", t, lin(u, m_ + "k"))
            v = site(L + "v", t, lin(u, m_ + "v"))
            li = site(L + "gate_i", t, _softcap(lin(u, m_ + "igate_preact"), gate_cap))
            lf = site(L + "gate_f", t, _logsigmoid(_softcap(lin(u, m_ + "fgate_preact"), gate_cap)))
            o = site(L + "gate_o", t, _sigmoid(lin(u, m_ + "ogate_preact")))
            qh, kh, vh = q.reshape(heads, dk) / np.sqrt(dk), kk.reshape(heads, dk), v.reshape(heads, dv)
            m_new = np.maximum(lf + m, li)
            fa, ia = np.exp(lf + m - m_new), np.exp(li - m_new)
            C = fa[:, None, None] * C + ia[:, None, None] * kh[:, :, None] * vh[:, None, :]
            n = fa[:, None] * n + ia[:, None] * kh
            Cu, nu = C * np.exp(m_new)[:, None, None], n * np.exp(m_new)[:, None]
            m = site(L + "m", t, m_new)  # an edited m: the scale the (unstabilised) state is kept in
            C = site(L + "state", t, Cu) * np.exp(-m)[:, None, None]
            n = site(L + "normalizer", t, nu) * np.exp(-m)[:, None]
            num = np.einsum("hk,hkv->hv", qh, C)
            den = np.maximum(np.abs((qh * n).sum(-1)), np.exp(-m)) + eps
            h = site(L + "h", t, (num / den[:, None]).reshape(-1))
            mix = site(L + "mix", t, lin(o * head_layernorm(h, m_ + "multihead_norm"), m_ + "out_proj"))
            x = site(L + "mid", t, x + mix)
            f = rms(x, p + "norm_ffn")
            g = lin(f, p + "ffn.proj_up_gate")
            ff = site(L + "mlp", t, lin(g * _sigmoid(g) * lin(f, p + "ffn.proj_up"), p + "ffn.proj_down"))
            outs.append(site(L + "out", t, x + ff))
        xs = outs
    head = w.get("lm_head.weight", emb)
    for t, x in enumerate(xs):
        site("logits", t, _softcap(head @ rms(x, "backbone.out_norm"), logit_cap))
    for k in range(n_layer):  # the shared name of mix: the same values
        rec[f"layers.{k}.mixer"] = rec[f"layers.{k}.mix"]
    return {name: np.stack(vals) for name, vals in rec.items()}
