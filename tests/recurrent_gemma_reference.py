"""An independent float64 RecurrentGemma (Griffin), one step at a time, written from the
papers' equations (De et al. 2024, "Griffin", section 2; Botev et al. 2024, "RecurrentGemma"):
NumPy only, one sequence, no chunks, no closed forms.

RG-LRU:  r_t = sigmoid(W_a u_t + b_a),  i_t = sigmoid(W_x u_t + b_x)      (block-diagonal W)
         a_t = sigma(Lambda)^(c r_t) = exp(-c r_t softplus(Lambda)),  c = 8
         h_t = a_t h_(t-1) + sqrt(1 - a_t^2) (i_t u_t)    (at position 0: h_0 = i_0 u_0)
Local attention: softmax over the last ``attention_window_size`` keys, rotary embedding on the
first half of every head (pairs j, j + rot/2), multi-query heads.

``overrides`` {(probe, t): f} replaces a site's value at step t (f gets a copy); ``state0``
{layer: dict} starts a layer from a state (``h``, ``conv``: the last K-1 x_branch rows, or
``keys``/``values``: lists of earlier rows); ``start`` replaces the embedding rows and
``pos0`` is the position of the first step.
"""
import numpy as np
import torch


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _softplus(v):
    return np.log1p(np.exp(v))


def _gelu(v, approximate):
    if approximate:
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
    from math import erf

    return 0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2)))


def _rms(x, w, eps):
    return x / np.sqrt((x ** 2).mean() + eps) * (1 + w)


def _rope(vec, pos, head_dim, rot, theta):
    """Rotate the first ``rot`` units of every head of ``vec`` by the position's angles."""
    out = vec.copy().reshape(-1, head_dim)
    half = rot // 2
    angle = pos * theta ** (-np.arange(half) * 2.0 / rot)
    c, s = np.cos(angle), np.sin(angle)
    x1, x2 = out[:, :half].copy(), out[:, half:rot].copy()
    out[:, :half] = x1 * c - x2 * s
    out[:, half:rot] = x2 * c + x1 * s
    return out.reshape(-1)


def reference(w, ids, cfg, overrides=None, state0=None, start=None, pos0=0):
    """Every probe of one sequence, {probe: [T, ...]}; ``w``: float64 arrays, canonical names."""
    overrides, state0 = overrides or {}, state0 or {}
    rec = {}
    T = len(ids) if start is None else len(start)
    eps = cfg.rms_norm_eps
    approx = cfg.hidden_activation != "gelu"
    H, KV, hd, W = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.attention_window_size

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    scale = float(torch.tensor(cfg.hidden_size ** 0.5, dtype=torch.bfloat16))  # the bfloat16 buffer
    if start is None:
        xs = [site("embed", t, w["model.embed_tokens.weight"][i] * scale) for t, i in enumerate(ids)]
    else:
        xs = list(start)
    for k in range(cfg.num_hidden_layers):
        p, tb = f"model.layers.{k}.", f"model.layers.{k}.temporal_block."
        nm = lambda s: f"layers.{k}.{s}"  # noqa: E731
        lin = lambda name, v: w[tb + name + ".weight"] @ v + w.get(tb + name + ".bias", 0)  # noqa: E731
        st = state0.get(k, {})
        h = st.get("h", np.zeros(cfg.lru_width))
        hist = [r for r in st.get("conv", np.zeros((cfg.conv1d_width - 1, cfg.lru_width)))]
        keys, values = list(st.get("keys", [])), list(st.get("values", []))
        outs = []
        for t in range(T):
            pos = pos0 + t
            x = xs[t]
            n = site(nm("in"), t, _rms(x, w[p + "temporal_pre_norm.weight"], eps))
            if cfg.kind(k) == "recurrent":
                y = site(nm("y_branch"), t, _gelu(lin("linear_y", n), approx))
                xb = site(nm("x_branch"), t, lin("linear_x", n))
                K = cfg.conv1d_width
                window = hist[len(hist) - (K - 1):] + [xb]
                kern = w[tb + "conv_1d.weight"][:, 0, :]
                u = site(nm("conv"), t, sum(kern[:, j] * window[j] for j in range(K)) + w[tb + "conv_1d.bias"])
                hist.append(xb)
                blocks = u.reshape(H, -1)

                def gate(name):
                    g = np.einsum("hi,hij->hj", blocks, w[tb + f"rg_lru.{name}_weight"]) + w[tb + f"rg_lru.{name}_bias"]
                    return _sigmoid(g.reshape(-1))

                r = site(nm("gate_r"), t, gate("recurrent_gate"))
                i = site(nm("gate_i"), t, gate("input_gate"))
                a = np.exp(-8.0 * r * _softplus(w[tb + "rg_lru.recurrent_param"]))
                a = site(nm("a"), t, np.zeros_like(a) if pos == 0 else a)
                norm = np.ones_like(a) if pos == 0 else np.sqrt(np.maximum(0, 1 - a ** 2))  # 0 if an edit made |a| > 1
                h = site(nm("state"), t, a * h + norm * (i * u))
                mixed = lin("linear_out", site(nm("mix"), t, h * y))
            else:
                rot = int(hd * cfg.partial_rotary_factor)
                q = site(nm("q"), t, _rope(lin("q_proj", n), pos, hd, rot, cfg.rope_theta))
                kk = site(nm("k"), t, _rope(lin("k_proj", n), pos, hd, rot, cfg.rope_theta))
                v = site(nm("v"), t, lin("v_proj", n))
                keys.append(kk)
                values.append(v)
                ks = np.stack(keys[-W:]).reshape(-1, KV, hd)
                vs = np.stack(values[-W:]).reshape(-1, KV, hd)
                o = np.zeros((H, hd))
                for head in range(H):
                    g = head // (H // KV)
                    s = ks[:, g] @ q.reshape(H, hd)[head] / np.sqrt(hd)
                    e = np.exp(s - s.max())
                    o[head] = (e / e.sum()) @ vs[:, g]
                mixed = lin("o_proj", site(nm("o"), t, o.reshape(-1)))
            resid = site(nm("mid"), t, x + site(nm("mixer"), t, mixed))
            m = _rms(resid, w[p + "channel_pre_norm.weight"], eps)
            mp = p + "mlp_block."
            gate_ = _gelu(w[mp + "gate_proj.weight"] @ m + w[mp + "gate_proj.bias"], approx)
            ff = w[mp + "down_proj.weight"] @ (gate_ * (w[mp + "up_proj.weight"] @ m + w[mp + "up_proj.bias"])) \
                + w[mp + "down_proj.bias"]
            outs.append(site(nm("out"), t, resid + site(nm("mlp"), t, ff)))
        xs = outs
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    cap = cfg.logits_soft_cap
    for t in range(T):
        site("logits", t, cap * np.tanh(head @ _rms(xs[t], w["model.final_norm.weight"], eps) / cap))
    return {k: np.stack(v) for k, v in rec.items()}
