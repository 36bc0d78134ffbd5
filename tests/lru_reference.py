"""The LRU written out step by step in complex128 from the paper's recurrence (Orvieto et al.
2023, eq. 7): an independent reference for SeqScope's chunked LRU.  One sequence at a time;
weights under SeqScope's LRU names as numpy float64 arrays.  Complex probes come back as
[..., N, 2] (re, im), as SeqScope records them."""
import numpy as np
from math import erf


def _rms(x, w, eps):
    return w * x / np.sqrt((x ** 2).mean() + eps)


def _gelu(v):
    return 0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2)))


def _parts(z):
    return np.stack([z.real, z.imag], -1)


def reference(w, ids, cfg, overrides=None, state0=None, start=None):
    """Every probe of an LRU run, {probe: [T, ...]}.  ``overrides`` {(probe, t): f} edit a value
    where it is computed (complex sites as [N, 2] re/im arrays); ``state0`` {layer: complex s};
    ``start``: layer-0 input rows instead of the embedding."""
    overrides, state0 = overrides or {}, state0 or {}
    rec = {}
    T = len(ids) if start is None else len(start)
    d = cfg.d_model

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    def complex_site(name, t, z):
        v = site(name, t, _parts(z))
        return v[..., 0] + 1j * v[..., 1]

    xs = [site("embed", t, w["embed.weight"][i]) for t, i in enumerate(ids)] if start is None else list(start)
    for k in range(cfg.n_layer):
        p = f"layers.{k}."
        nm = lambda s: f"layers.{k}.{s}"  # noqa: E731
        lam = np.exp(-np.exp(w[p + "lru.nu_log"]) + 1j * np.exp(w[p + "lru.theta_log"]))
        gamma = np.exp(w[p + "lru.gamma_log"])
        B = w[p + "lru.B_re"] + 1j * w[p + "lru.B_im"]
        C = w[p + "lru.C_re"] + 1j * w[p + "lru.C_im"]
        s = state0.get(k, np.zeros(cfg.d_state, dtype=complex))
        outs = []
        for t in range(T):
            x = xs[t]
            u = site(nm("in"), t, _rms(x, w[p + "norm.weight"], cfg.norm_eps))
            bu = complex_site(nm("Bu"), t, gamma * (B @ u))
            s = complex_site(nm("state"), t, lam * s + bu)
            y = site(nm("y"), t, (C @ s).real + w[p + "lru.D"] * u)
            g = w[p + "glu.weight"] @ _gelu(y) + w[p + "glu.bias"]
            outs.append(site(nm("out"), t, x + site(nm("mixer"), t, g[:d] / (1 + np.exp(-g[d:])))))
        xs = outs
    for t in range(T):
        site("logits", t, w["head.weight"] @ _rms(xs[t], w["norm_f.weight"], cfg.norm_eps))
    return {k: np.stack(v) for k, v in rec.items()}
