"""An independent float64 RWKV-7: the paper's recurrent equations one token at a time, in
NumPy, written without any engine code; and random ``.pth`` state dicts for the tests.

Per head the state S is [N values, N keys] and one step is

    S_t = S_(t-1) diag(w_t) - (S_(t-1) kk_t^T) (kk_t * a_t) + v_t^T k_t,   o_t = S_t r_t

``overrides`` lets a test edit a value at a site and step by hand: ``{(probe, t): f}`` with
probe ``layers.{k}.{site}`` and ``f(value) -> value`` (``state``: f gets and returns the
[H, N, N] array).  ``state0`` gives layers a starting state ``{k: (S [H, N, N], x_prev [C],
f_prev [C])}``; ``start_layer_input`` gives layer-0 input rows (before ln0) instead of the embedding.
"""
from __future__ import annotations

import math

import numpy as np
import torch

DECAY_SCALE = math.exp(-0.5)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ln(x, w, b, eps=1e-5):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / np.sqrt(var + eps) * w + b


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def random_state_dict(seed=0, vocab=37, C=16, heads=2, layers=2, ffn=None, d_w=8, d_a=6, d_v=4, d_g=10,
                      layer0_v=False, dtype=torch.float32) -> dict:
    """A random RWKV-7 ``.pth`` state dict with the exact key names and shapes, livelier than an
    initialisation (decays from fast to slow, in-context rates near 0 and 1, O(1) embeddings)."""
    g = torch.Generator().manual_seed(seed)
    N = C // heads
    F = ffn or 4 * C

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    sd = {"emb.weight": randn(vocab, C), "blocks.0.ln0.weight": 1 + randn(C, scale=0.2),
          "blocks.0.ln0.bias": randn(C, scale=0.2)}
    for i in range(layers):
        p, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"] = 1 + randn(C, scale=0.2)
            sd[p + ln + ".bias"] = randn(C, scale=0.2)
        for m in "rwkvag":
            sd[a + "x_" + m] = uniform(0, 1, 1, 1, C)
        sd[a + "w0"] = uniform(-4, 3, 1, 1, C)
        sd[a + "a0"] = randn(1, 1, C, scale=2.0)
        for m, rank in (("w", d_w), ("a", d_a), ("g", d_g)) + ((("v", d_v),) if i or layer0_v else ()):
            sd[a + m + "1"] = randn(C, rank, scale=0.5)
            sd[a + m + "2"] = randn(rank, C, scale=0.5)
        if i or layer0_v:
            sd[a + "v0"] = randn(1, 1, C)
        sd[a + "k_k"] = 1 + randn(1, 1, C, scale=0.3)
        sd[a + "k_a"] = uniform(0, 1.5, 1, 1, C)
        sd[a + "r_k"] = randn(heads, N, scale=0.5)
        for m in ("receptance", "key", "value", "output"):
            sd[a + m + ".weight"] = randn(C, C, scale=C ** -0.5)
        sd[a + "ln_x.weight"] = 1 + randn(C, scale=0.2)
        sd[a + "ln_x.bias"] = randn(C, scale=0.2)
        sd[f + "x_k"] = uniform(0, 1, 1, 1, C)
        sd[f + "key.weight"] = randn(F, C, scale=C ** -0.5)
        sd[f + "value.weight"] = randn(C, F, scale=F ** -0.5)
    sd["ln_out.weight"] = 1 + randn(C, scale=0.2)
    sd["ln_out.bias"] = randn(C, scale=0.2)
    sd["head.weight"] = randn(vocab, C, scale=C ** -0.5)
    return {k: v.to(dtype) for k, v in sd.items()}


def reference_rwkv7(w: dict, ids, overrides=None, state0=None, start_layer_input=None):
    """One sequence.  ``w``: float64 arrays with ``.pth`` names.  Returns ``{probe: [T, ...]}``
    for embed, every layer site (attn excluded) and logits."""
    overrides = overrides or {}
    state0 = state0 or {}
    rec: dict[str, list] = {}
    T = len(ids)
    n_layer = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    H, N = w["blocks.0.att.r_k"].shape
    C = H * N

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(np.array(v, dtype=np.float64, copy=True)) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    E = w["emb.weight"]
    xs = [site("embed", t, E[i]) for t, i in enumerate(ids)] if start_layer_input is None else list(start_layer_input)
    xs = [_ln(x, w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"]) for x in xs]
    v_first = [None] * T
    for k in range(n_layer):
        p, at, ff = f"blocks.{k}.", f"blocks.{k}.att.", f"blocks.{k}.ffn."
        name = lambda s: f"layers.{k}.{s}"  # noqa: E731
        vec = lambda s: w[at + s].reshape(-1)  # noqa: E731
        S, x_prev, f_prev = state0.get(k, (np.zeros((H, N, N)), np.zeros(C), np.zeros(C)))
        S = S.copy()
        outs = []
        for t in range(T):
            h = xs[t]
            x = site(name("in"), t, _ln(h, w[p + "ln1.weight"], w[p + "ln1.bias"]))
            mix = {m: x + (x_prev - x) * vec("x_" + m) for m in "rwkvag"}
            r = site(name("r"), t, w[at + "receptance.weight"] @ mix["r"])
            z = vec("w0") + np.tanh(mix["w"] @ w[at + "w1"]) @ w[at + "w2"]
            decay = site(name("w"), t, np.exp(-DECAY_SCALE * _sigmoid(z)))
            k0 = w[at + "key.weight"] @ mix["k"]
            a = site(name("a"), t, _sigmoid(vec("a0") + (mix["a"] @ w[at + "a1"]) @ w[at + "a2"]))
            g = site(name("g"), t, _sigmoid(mix["g"] @ w[at + "g1"]) @ w[at + "g2"])
            kk = (k0 * vec("k_k")).reshape(H, N)
            kk = site(name("kk"), t, (kk / np.linalg.norm(kk, axis=1, keepdims=True)).reshape(C))
            key = site(name("k"), t, k0 * (1 + (a - 1) * vec("k_a")))
            v = w[at + "value.weight"] @ mix["v"]
            if k == 0:
                v = v_first[t] = site(name("v"), t, v)
            else:
                mv = _sigmoid(vec("v0") + (mix["v"] @ w[at + "v1"]) @ w[at + "v2"])
                v = site(name("v"), t, v + (v_first[t] - v) * mv)
            o = np.zeros(C)
            heads = [slice(hd * N, (hd + 1) * N) for hd in range(H)]
            S = np.stack([S[hd] * decay[sl][None, :] - np.outer(S[hd] @ kk[sl], kk[sl] * a[sl])
                          + np.outer(v[sl], key[sl]) for hd, sl in enumerate(heads)])
            S = site(name("state"), t, S)
            for hd in range(H):
                sl = slice(hd * N, (hd + 1) * N)
                o[sl] = S[hd] @ r[sl]
            o = site(name("o"), t, o)
            y = np.zeros(C)
            for hd in range(H):  # GroupNorm per head, then the bonus term
                sl = slice(hd * N, (hd + 1) * N)
                oh = o[sl]
                y[sl] = (oh - oh.mean()) / np.sqrt(oh.var() + 64e-5)
                y[sl] = y[sl] * w[at + "ln_x.weight"][sl] + w[at + "ln_x.bias"][sl]
                y[sl] += (r[sl] * key[sl] * w[at + "r_k"][hd]).sum() * v[sl]
            att = site(name("att"), t, w[at + "output.weight"] @ (y * g))
            h2 = site(name("mid"), t, h + att)
            f = site(name("ffn_in"), t, _ln(h2, w[p + "ln2.weight"], w[p + "ln2.bias"]))
            fx = f + (f_prev - f) * w[ff + "x_k"].reshape(-1)
            fk = site(name("ffn_k"), t, np.maximum(w[ff + "key.weight"] @ fx, 0) ** 2)
            fo = site(name("ffn"), t, w[ff + "value.weight"] @ fk)
            outs.append(site(name("out"), t, h2 + fo))
            x_prev, f_prev = x, f
        xs = outs
    for t in range(T):
        site("logits", t, w["head.weight"] @ _ln(xs[t], w["ln_out.weight"], w["ln_out.bias"]))
    for k in range(n_layer):  # the shared names of att and ffn: the same values
        rec[f"layers.{k}.mixer"], rec[f"layers.{k}.mlp"] = rec[f"layers.{k}.att"], rec[f"layers.{k}.ffn"]
    return {k: np.stack(v) for k, v in rec.items()}
