"""An independent float64 Mamba2: the recurrent form of the SSD layer (Dao & Gu 2024, and
``transformers``' ``Mamba2Mixer``), one token at a time, in NumPy, written without engine code.

``overrides``: ``{(probe, t): f}`` edits a value by hand (probe ``layers.{k}.{site}``, ``f(value)
-> value``; the state is [H, P, N]).  ``state0``: ``{k: (S [H, P, N], xBC buffer [K-1, conv_dim])}``
starts a layer from a state.  ``start_layer_input`` replaces the embeddings (a suffix run).
"""
from __future__ import annotations

import numpy as np


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def reference_mamba2(w: dict, ids, n_layer: int, *, n_groups: int, eps=1e-5, dt_limit=(0.0, np.inf),
                     overrides=None, state0=None, start_layer_input=None):
    """One sequence.  ``w``: float64 arrays with ``Mamba2ForCausalLM`` names.  Returns
    ``{probe: [T, ...]}`` for embed, every layer site but attn (state as [T, H*P, N]) and logits."""
    overrides = overrides or {}
    state0 = state0 or {}
    rec: dict[str, list] = {}
    T = len(ids) if start_layer_input is None else len(start_layer_input)

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    def rms(h, wn):
        return wn * (h / np.sqrt((h ** 2).mean() + eps))

    E = w["backbone.embeddings.weight"]
    xs = [site("embed", t, E[i]) for t, i in enumerate(ids)] if start_layer_input is None else list(start_layer_input)
    for k in range(n_layer):
        p = f"backbone.layers.{k}."
        m = p + "mixer."
        bias = lambda n: w.get(m + n, 0.0)  # noqa: E731
        H = w[m + "A_log"].shape[0]
        di = w[m + "norm.weight"].shape[0]
        P = di // H
        conv_w = w[m + "conv1d.weight"][:, 0, :]
        conv_dim, K = conv_w.shape
        G = n_groups
        N = (conv_dim - di) // (2 * G)
        A = -np.exp(w[m + "A_log"])
        S, hist = state0.get(k, (np.zeros((H, P, N)), np.zeros((K - 1, conv_dim))))
        S = S.copy()
        hist = [row.copy() for row in hist]  # the last K-1 rows of xBC
        name = lambda s: f"layers.{k}.{s}"  # noqa: E731
        outs = []
        for t in range(T):
            h = xs[t]
            n = site(name("in"), t, rms(h, w[p + "norm.weight"]))
            proj = w[m + "in_proj.weight"] @ n + bias("in_proj.bias")
            z = site(name("z"), t, proj[:di])
            xbc = proj[di:di + conv_dim]
            window = hist[len(hist) - (K - 1):] + [xbc] if K > 1 else [xbc]
            c = sum(conv_w[:, j] * window[j] for j in range(K)) + bias("conv1d.bias")
            hist.append(xbc)
            c = _silu(c)
            x = site(name("x"), t, c[:di])
            Bt = site(name("B"), t, c[di:di + G * N])
            Ct = site(name("C"), t, c[di + G * N:])
            dt = np.clip(_softplus(proj[di + conv_dim:] + w[m + "dt_bias"]), *dt_limit)
            dt = site(name("dt"), t, dt)
            xh = x.reshape(H, P)
            group = np.arange(H) // (H // G)  # head h reads group h // (H / G)
            Bh, Ch = Bt.reshape(G, N)[group], Ct.reshape(G, N)[group]
            S = np.exp(dt * A)[:, None, None] * S + dt[:, None, None] * xh[:, :, None] * Bh[:, None, :]
            S = site(name("state"), t, S)
            y = np.einsum("hpn,hn->hp", S, Ch) + w[m + "D"][:, None] * xh
            y = site(name("y"), t, y.reshape(di))
            gz = (y * _silu(z)).reshape(G, di // G)
            gz = gz / np.sqrt((gz ** 2).mean(-1, keepdims=True) + eps)
            gated = site(name("gated"), t, w[m + "norm.weight"] * gz.reshape(di))
            mix = site(name("mixer"), t, w[m + "out_proj.weight"] @ gated + bias("out_proj.bias"))
            outs.append(site(name("out"), t, h + mix))
        xs = outs
    head = w.get("lm_head.weight", E)
    for t in range(T):
        site("logits", t, head @ rms(xs[t], w["backbone.norm_f.weight"]))
    out = {k: np.stack(v) for k, v in rec.items()}
    for k in range(n_layer):
        st = out[f"layers.{k}.state"]
        out[f"layers.{k}.state"] = st.reshape(T, -1, st.shape[-1])
    return out
