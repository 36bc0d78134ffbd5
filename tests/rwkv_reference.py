"""An independent float64 RWKV-4: the equations of the paper (and of ``transformers``'
``RwkvForCausalLM``), one token at a time, in NumPy, written without any engine code.  The
WKV sums are kept unscaled (numerator N, denominator D, no stabilising max: float64 holds
them for the tests' inputs); the ``state`` probe is recorded in the engine's (num, den, max)
form as (N e^-m, D e^-m, m), m the running max ``m_t = max(m_(t-1) + w, k_t)``.

``overrides`` lets a test edit a value at a site and step by hand: ``{(probe, t): f}`` with
probe ``layers.{k}.{site}``; ``f(value) -> value`` (for ``state``: f gets and returns the
[A, 3] (num, den, max) array).  ``state0`` gives layers a starting state
``{k: (state [A, 3], a_prev [H], f_prev [H])}``; ``start_layer_input``: layer-0 input rows
(before pre_ln) instead of the embedding.
"""
from __future__ import annotations

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ln(x, w, b, eps):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / np.sqrt(var + eps) * w + b


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def reference_rwkv(w: dict, ids, n_layer: int, eps=1e-5, overrides=None, state0=None, start_layer_input=None):
    """One sequence.  ``w``: float64 arrays with ``RwkvForCausalLM`` names.  Returns
    ``{probe: [T, ...]}`` for embed, every layer site (attn excluded) and logits."""
    overrides = overrides or {}
    state0 = state0 or {}
    rec: dict[str, list] = {}
    T = len(ids)

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(np.array(v, dtype=np.float64, copy=True)) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    E = w["rwkv.embeddings.weight"]
    xs = [site("embed", t, E[i]) for t, i in enumerate(ids)] if start_layer_input is None else list(start_layer_input)
    for k in range(n_layer):
        p = f"rwkv.blocks.{k}."
        at, ff = p + "attention.", p + "feed_forward."
        A = w[at + "time_decay"].shape[0]
        H = w[p + "ln1.weight"].shape[0]
        name = lambda s: f"layers.{k}.{s}"  # noqa: E731
        mk, mv, mr = (w[at + f"time_mix_{m}"].reshape(-1) for m in ("key", "value", "receptance"))
        fmk, fmr = (w[ff + f"time_mix_{m}"].reshape(-1) for m in ("key", "receptance"))
        decay = -np.exp(w[at + "time_decay"])
        bonus = w[at + "time_first"]
        st, a_prev, f_prev = state0.get(k, (None, np.zeros(H), np.zeros(H)))
        if st is None:  # the unscaled sums, and the running max that the scaled form carries
            N, D, m = np.zeros(A), np.zeros(A), np.full(A, -1e38)
        else:  # from (num, den, max): N = num e^max, D = den e^max
            N, D, m = st[:, 0] * np.exp(st[:, 2]), st[:, 1] * np.exp(st[:, 2]), st[:, 2].copy()
        outs = []
        for t in range(T):
            x = xs[t]
            if k == 0:
                x = _ln(x, w[p + "pre_ln.weight"], w[p + "pre_ln.bias"], eps)
            a = site(name("att_in"), t, _ln(x, w[p + "ln1.weight"], w[p + "ln1.bias"], eps))
            r = site(name("r"), t, _sigmoid(w[at + "receptance.weight"] @ (a * mr + a_prev * (1 - mr))))
            kk = site(name("k"), t, w[at + "key.weight"] @ (a * mk + a_prev * (1 - mk)))
            v = site(name("v"), t, w[at + "value.weight"] @ (a * mv + a_prev * (1 - mv)))
            wt = site(name("w"), t, decay.copy())
            ut = site(name("u"), t, bonus.copy())
            # the paper's form, unscaled: wkv_t = (N_(t-1) + e^(u+k_t) v_t) / (D_(t-1) + e^(u+k_t))
            wkv = site(name("wkv"), t, (N + np.exp(ut + kk) * v) / (D + np.exp(ut + kk)))
            N = np.exp(wt) * N + np.exp(kk) * v
            D = np.exp(wt) * D + np.exp(kk)
            m = np.maximum(m + wt, kk)
            s = site(name("state"), t, np.stack([N * np.exp(-m), D * np.exp(-m), m], -1))
            N, D, m = s[:, 0] * np.exp(s[:, 2]), s[:, 1] * np.exp(s[:, 2]), s[:, 2].copy()
            att = site(name("att"), t, w[at + "output.weight"] @ (r * wkv))
            x2 = site(name("mid"), t, x + att)
            f = site(name("ffn_in"), t, _ln(x2, w[p + "ln2.weight"], w[p + "ln2.bias"], eps))
            fk = site(name("ffn_k"), t, np.maximum(w[ff + "key.weight"] @ (f * fmk + f_prev * (1 - fmk)), 0) ** 2)
            fr = site(name("ffn_r"), t, _sigmoid(w[ff + "receptance.weight"] @ (f * fmr + f_prev * (1 - fmr))))
            fo = site(name("ffn"), t, fr * (w[ff + "value.weight"] @ fk))
            outs.append(site(name("out"), t, x2 + fo))
            a_prev, f_prev = a, f
        xs = outs
    head = w.get("head.weight", E)
    for t in range(T):
        hf = _ln(xs[t], w["rwkv.ln_out.weight"], w["rwkv.ln_out.bias"], 1e-5)
        site("logits", t, head @ hf)
    for k in range(n_layer):  # the shared names of att and ffn: the same values
        rec[f"layers.{k}.mixer"], rec[f"layers.{k}.mlp"] = rec[f"layers.{k}.att"], rec[f"layers.{k}.ffn"]
    return {k: np.stack(v) for k, v in rec.items()}
