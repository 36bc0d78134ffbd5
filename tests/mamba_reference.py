"""An independent float64 Mamba: the equations of the paper (and of ``transformers``'
``MambaMixer``), one token at a time, in NumPy, written without any engine code.

``overrides`` lets a test edit a value at a site and step by hand: ``{(probe, t): f}`` with
probe ``layers.{k}.{site}``; ``f(value) -> value``.  ``state0`` gives layers a starting state
``{k: (ssm [d_inner, d_state], conv [d_conv-1, d_inner])}``.
"""
from __future__ import annotations

import numpy as np


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def reference_mamba(w: dict, ids, n_layer: int, eps=1e-5, overrides=None, state0=None, norm="rms",
                    start_layer_input=None):
    """One sequence.  ``w``: float64 arrays with ``MambaForCausalLM`` names.  Returns
    ``{probe: [T, ...]}`` for embed, every layer site (attn excluded) and logits."""
    overrides = overrides or {}
    state0 = state0 or {}
    rec: dict[str, list] = {}
    T = len(ids)

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    def normf(h, wn, bn):
        if norm == "layer":
            mu = h.mean()
            var = ((h - mu) ** 2).mean()
            return (h - mu) / np.sqrt(var + eps) * wn + bn
        return wn * (h / np.sqrt((h ** 2).mean() + eps))

    E = w["backbone.embeddings.weight"]
    xs = [site("embed", t, E[i]) for t, i in enumerate(ids)] if start_layer_input is None else list(start_layer_input)
    for k in range(n_layer):
        p = f"backbone.layers.{k}."
        m = p + "mixer."
        g = lambda n: w.get(m + n)  # noqa: E731
        di, N = w[m + "A_log"].shape
        K = w[m + "conv1d.weight"].shape[-1]
        R = w[m + "dt_proj.weight"].shape[1]
        A = -np.exp(w[m + "A_log"])
        ssm, conv_buf = state0.get(k, (np.zeros((di, N)), np.zeros((K - 1, di))))
        ssm = ssm.copy()
        hist = [row.copy() for row in conv_buf]  # the last K-1 values of `in`
        outs = []
        name = lambda s: f"layers.{k}.{s}"  # noqa: E731
        for t in range(T):
            h = xs[t]
            n = normf(h, w[p + "norm.weight"], w.get(p + "norm.bias"))
            xz = w[m + "in_proj.weight"] @ n + (g("in_proj.bias") if g("in_proj.bias") is not None else 0)
            xi, z = xz[:di], xz[di:]
            xi = site(name("in"), t, xi)
            window = hist[-(K - 1):] + [xi] if K > 1 else [xi]
            cw = w[m + "conv1d.weight"][:, 0, :]
            c = sum(cw[:, j] * window[j] for j in range(K))
            if g("conv1d.bias") is not None:
                c = c + g("conv1d.bias")
            u = site(name("conv"), t, _silu(c))
            hist.append(xi)
            dbc = w[m + "x_proj.weight"] @ u
            dt = _softplus(w[m + "dt_proj.weight"] @ dbc[:R] + w[m + "dt_proj.bias"])
            dt = site(name("dt"), t, dt)
            Bt = site(name("B"), t, dbc[R:R + N])
            Ct = site(name("C"), t, dbc[R + N:])
            ssm = np.exp(dt[:, None] * A) * ssm + (dt * u)[:, None] * Bt[None, :]
            ssm = site(name("state"), t, ssm)
            gate = site(name("gate"), t, _silu(z))
            y = site(name("y"), t, (ssm @ Ct + w[m + "D"] * u) * gate)
            mix = w[m + "out_proj.weight"] @ y + (g("out_proj.bias") if g("out_proj.bias") is not None else 0)
            mix = site(name("mixer"), t, mix)
            outs.append(site(name("out"), t, h + mix))
        xs = outs
    head = w.get("lm_head.weight", E)
    for t in range(T):
        hf = normf(xs[t], w["backbone.norm_f.weight"], w.get("backbone.norm_f.bias"))
        site("logits", t, head @ hf)
    return {k: np.stack(v) for k, v in rec.items()}
