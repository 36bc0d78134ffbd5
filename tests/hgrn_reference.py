"""HGRN written out step by step in float64 from the paper's equations and fla's layer
(``fla/layers/hgrn.py``, ``fla/models/hgrn/modeling_hgrn.py``): an independent reference for
SeqScope's chunked HGRN.  One sequence at a time; weights under fla's names as numpy arrays."""
import numpy as np


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _silu(v):
    return v * _sig(v)


def _rms(x, w, eps):
    y = x / np.sqrt((x ** 2).mean() + eps)
    return y if w is None else w * y


def lower_bounds(raw):
    e = np.exp(raw - raw.max(0))
    p = e / e.sum(0)
    return np.cumsum(p, 0) - p[0]


def reference(w, ids, cfg, overrides=None, state0=None, start=None):
    """Every probe of an HGRN run, {probe: [T, ...]}.  ``overrides`` {(probe, t): f} edit a
    value where it is computed; ``state0`` {layer: (h, conv_i buffer, conv_f buffer)} (buffers:
    the K-1 projections before step 0); ``start``: layer-0 input rows instead of the embedding."""
    overrides, state0 = overrides or {}, state0 or {}
    rec = {}
    T = len(ids) if start is None else len(start)
    eps = cfg.norm_eps

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    xs = [site("embed", t, w["model.embeddings.weight"][i]) for t, i in enumerate(ids)] if start is None else list(start)
    lbs = lower_bounds(w["model.lower_bounds"]) if cfg.lower_bound else np.zeros((cfg.n_layer, cfg.d_inner))
    K = cfg.conv_size
    for k in range(cfg.n_layer):
        p = f"model.layers.{k}."
        nm = lambda s: f"layers.{k}.{s}"  # noqa: E731
        zero_buf = np.zeros((max(K - 1, 0), cfg.d_inner))
        h, bi, bf = state0.get(k, (np.zeros(cfg.d_inner), zero_buf, zero_buf))
        hist_i, hist_f = list(bi), list(bf)
        outs = []
        for t in range(T):
            x = xs[t]
            u = site(nm("in"), t, _rms(x, w[p + "attn_norm.weight"], eps))
            ir, fr = w[p + "attn.i_proj.weight"] @ u, w[p + "attn.f_proj.weight"] @ u
            if K:
                hist_i.append(ir)
                hist_f.append(fr)
                wi, wf = w[p + "attn.i_conv1d.weight"][:, 0], w[p + "attn.f_conv1d.weight"][:, 0]
                ir = sum(wi[:, j] * hist_i[-K + j] for j in range(K))
                fr = sum(wf[:, j] * hist_f[-K + j] for j in range(K))
            i = site(nm("i"), t, _silu(ir))
            f = site(nm("f"), t, lbs[k] + (1 - lbs[k]) * _sig(fr))
            g = site(nm("g"), t, _silu(w[p + "attn.g_proj.weight"] @ u))
            h = site(nm("state"), t, f * h + (1 - f) * i)
            o = site(nm("o"), t, _rms(h, w.get(p + "attn.g_norm.weight"), eps) * g)
            x = site(nm("mid"), t, x + site(nm("mixer"), t, w[p + "attn.o_proj.weight"] @ o))
            m = _rms(x, w[p + "mlp_norm.weight"], eps)
            ff = w[p + "mlp.down_proj.weight"] @ (_silu(w[p + "mlp.gate_proj.weight"] @ m) * (w[p + "mlp.up_proj.weight"] @ m))
            ff = site(nm("mlp"), t, ff)
            outs.append(site(nm("out"), t, x + ff))
        xs = outs
    head = w.get("lm_head.weight", w["model.embeddings.weight"])
    for t in range(T):
        site("logits", t, head @ _rms(xs[t], w["model.norm.weight"], eps))
    return {k: np.stack(v) for k, v in rec.items()}
