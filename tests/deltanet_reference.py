"""An independent float64 DeltaNet: the recurrent equations of the delta rule (Schlag et al.
2021; Yang et al. 2024) and the block of flash-linear-attention's ``DeltaNetForCausalLM``, one
token at a time, in NumPy, written without any engine code.  Also: fla-layout checkpoints with
random weights (fla's model classes cannot run on this CPU, so the tests write the folders
``DeltaNetForCausalLM.save_pretrained`` writes: fla's ``config.json`` and its weight names).

``overrides`` lets a test edit a value at a site and step by hand: ``{(probe, t): f}`` with
probe ``layers.{k}.{site}``; ``f(value) -> value`` (``state`` is [H, d_k, d_v]).  ``state0``
gives layers a starting state ``{k: (S [H, d_k, d_v], (q, k, v) conv histories [K-1, width])}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

#: fla's DeltaNetConfig defaults (fla/models/delta_net/configuration_delta_net.py)
FLA_DEFAULTS = dict(attn_mode="chunk", hidden_size=2048, expand_k=1.0, expand_v=1, use_gate=False,
                    use_short_conv=True, conv_size=4, use_beta=True, use_output_norm=True, num_heads=16,
                    qk_norm="l2", qk_activation="silu", max_position_embeddings=2048, hidden_ratio=4,
                    intermediate_size=None, hidden_act="swish", num_hidden_layers=24, norm_eps=1e-6, attn=None,
                    use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                    initializer_range=0.02, fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True,
                    use_l2warp=False, vocab_size=32000)


#: fla's GatedDeltaNetConfig defaults (fla/models/gated_deltanet/configuration_gated_deltanet.py)
FLA_GATED_DEFAULTS = dict(attn_mode="chunk", hidden_size=2048, expand_v=2.0, use_gate=True, use_short_conv=True,
                          allow_neg_eigval=False, conv_size=4, head_dim=256, num_heads=6, num_v_heads=None,
                          max_position_embeddings=2048, hidden_ratio=4, intermediate_size=None, hidden_act="swish",
                          num_hidden_layers=21, norm_eps=1e-6, attn=None, use_cache=True, pad_token_id=None,
                          bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.02,
                          fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True, fuse_linear_cross_entropy=False,
                          use_l2warp=False, vocab_size=32000)


def fla_config(**overrides) -> dict:
    """A config.json of fla's ``DeltaNetConfig`` (as ``save_pretrained`` writes it)."""
    cfg = {**FLA_DEFAULTS, **overrides}
    return {"architectures": ["DeltaNetForCausalLM"], "model_type": "delta_net", "dtype": "float32",
            "transformers_version": "4.53.0", **cfg}


def fla_gated_config(**overrides) -> dict:
    """A config.json of fla's ``GatedDeltaNetConfig``."""
    cfg = {**FLA_GATED_DEFAULTS, **overrides}
    return {"architectures": ["GatedDeltaNetForCausalLM"], "model_type": "gated_deltanet", "dtype": "float32",
            "transformers_version": "4.53.0", **cfg}


def dims(cfg: dict) -> tuple[int, int, int, int]:
    """(num_heads, num_v_heads, d_k, d_v) per head of a config.json dict."""
    H = cfg["num_heads"]
    if cfg["model_type"] == "gated_deltanet":
        return H, cfg.get("num_v_heads") or H, cfg["head_dim"], int(cfg["head_dim"] * cfg["expand_v"])
    d = cfg["hidden_size"]
    return H, H, int(d * cfg["expand_k"]) // H, int(d * cfg["expand_v"]) // H


def intermediate_size(cfg: dict) -> int:
    if cfg.get("intermediate_size"):
        return cfg["intermediate_size"]
    inter = int(cfg["hidden_size"] * (cfg.get("hidden_ratio") or 4) * 2 / 3)
    return 256 * ((inter + 255) // 256)


def fla_state_dict(cfg: dict, seed=0, conv_bias=False) -> dict[str, torch.Tensor]:
    """Random weights under fla's names for a config.json dict (scales chosen so that every
    part of the block matters: convolutions, beta near 0 and 1, the gate, the MLP)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=1.0: torch.randn(*shape, generator=g) * s  # noqa: E731
    d, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    H, HV, hk, hv = dims(cfg)
    dk, dv = H * hk, HV * hv
    gated = cfg["model_type"] == "gated_deltanet"
    inter = intermediate_size(cfg)
    K = cfg["conv_size"]
    sd = {"model.embeddings.weight": r(V, d)}
    for i in range(L):
        p = f"model.layers.{i}."
        a = p + "attn."
        sd[p + "attn_norm.weight"] = 1 + r(d, s=0.2)
        sd[a + "q_proj.weight"] = r(dk, d, s=d ** -0.5)
        sd[a + "k_proj.weight"] = r(dk, d, s=d ** -0.5)
        sd[a + "v_proj.weight"] = r(dv, d, s=d ** -0.5)
        if gated or cfg["use_beta"]:
            sd[a + "b_proj.weight"] = r(HV, d, s=2 * d ** -0.5)
        if gated:  # decays from about 0.3 to 0.999
            sd[a + "a_proj.weight"] = r(HV, d, s=d ** -0.5)
            sd[a + "A_log"] = torch.log(torch.rand(HV, generator=g) * 2 + 0.1)
            sd[a + "dt_bias"] = r(HV, s=0.5) - 2
        if cfg["use_short_conv"]:
            for name, width in (("q", dk), ("k", dk), ("v", dv)):
                sd[a + f"{name}_conv1d.weight"] = r(width, 1, K, s=0.7)
                if conv_bias:
                    sd[a + f"{name}_conv1d.bias"] = r(width, s=0.3)
        if cfg["use_gate"]:
            sd[a + "g_proj.weight"] = r(dv, d, s=d ** -0.5)
        sd[a + "o_norm.weight"] = 1 + r(hv, s=0.2)
        sd[a + "o_proj.weight"] = r(d, dv, s=dv ** -0.5)
        sd[p + "mlp_norm.weight"] = 1 + r(d, s=0.2)
        sd[p + "mlp.gate_proj.weight"] = r(inter, d, s=d ** -0.5)
        sd[p + "mlp.up_proj.weight"] = r(inter, d, s=d ** -0.5)
        sd[p + "mlp.down_proj.weight"] = r(d, inter, s=inter ** -0.5)
    sd["model.norm.weight"] = 1 + r(d, s=0.2)
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = r(V, d, s=d ** -0.5)
    return sd


def write_fla_folder(path, cfg: dict, sd: dict) -> Path:
    """What ``DeltaNetForCausalLM.save_pretrained`` writes: config.json + model.safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _rms(x, w, eps):
    return w * (x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps))


def _activate(x, kind):
    return {"silu": x, "relu": np.maximum(x, 0), "elu": np.where(x > 0, x, np.expm1(np.minimum(x, 0))) + 1,
            "identity": x}[kind]


def _normalise(x, kind):
    if kind == "l2":
        return x / np.sqrt((x ** 2).sum(-1, keepdims=True) + 1e-6)
    return x / x.sum(-1, keepdims=True)


def reference_deltanet(w: dict, cfg: dict, ids, overrides=None, state0=None, start_layer_input=None,
                       conv_bias=False):
    """One sequence.  ``w``: float64 arrays under fla's names; ``cfg``: the config.json dict.
    Returns ``{probe: [T, ...]}`` for embed, every layer site (attn excluded) and logits."""
    overrides = overrides or {}
    state0 = state0 or {}
    rec: dict[str, list] = {}
    T = len(ids) if start_layer_input is None else len(start_layer_input)
    eps = cfg["norm_eps"]
    H, HV, dk, dv = dims(cfg)
    K = cfg["conv_size"]
    gated = cfg["model_type"] == "gated_deltanet"
    act, norm = ("silu", "l2") if gated else (cfg["qk_activation"], cfg["qk_norm"])
    use_beta = gated or cfg["use_beta"]

    def site(name, t, v):
        f = overrides.get((name, t))
        v = f(v.copy()) if f else v
        rec.setdefault(name, [None] * T)[t] = v
        return v

    E = w["model.embeddings.weight"]
    xs = [site("embed", t, E[i]) for t, i in enumerate(ids)] if start_layer_input is None else list(start_layer_input)
    for k in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{k}."
        a = p + "attn."
        name = lambda s: f"layers.{k}.{s}"  # noqa: E731
        S0, hist0 = state0.get(k, (np.zeros((HV, dk, dv)), (np.zeros((K - 1, H * dk)), np.zeros((K - 1, H * dk)),
                                                             np.zeros((K - 1, HV * dv)))))
        S = S0.copy()
        hists = [list(h) for h in hist0]
        outs = []
        for t in range(T):
            x = xs[t]
            n = site(name("in"), t, _rms(x, w[p + "attn_norm.weight"], eps))
            branches = []
            for j, c in enumerate("qkv"):
                proj = w[a + f"{c}_proj.weight"] @ n
                if cfg["use_short_conv"]:
                    window = hists[j][len(hists[j]) - (K - 1):] + [proj] if K > 1 else [proj]
                    cw = w[a + f"{c}_conv1d.weight"][:, 0, :]
                    proj_c = sum(cw[:, m] * window[m] for m in range(K))
                    if conv_bias:
                        proj_c = proj_c + w[a + f"{c}_conv1d.bias"]
                    hists[j].append(proj)
                    proj = proj_c
                if c == "v" or act == "silu":
                    proj = _silu(proj)
                branches.append(proj)
            q = _normalise(_activate(branches[0].reshape(H, dk), act), norm).reshape(-1)
            kk = _normalise(_activate(branches[1].reshape(H, dk), act), norm).reshape(-1)
            q = site(name("q"), t, q).reshape(H, dk)
            kk = site(name("k"), t, kk).reshape(H, dk)
            v = site(name("v"), t, branches[2]).reshape(HV, dv)
            beta = 1 / (1 + np.exp(-(w[a + "b_proj.weight"] @ n))) if use_beta else np.ones(HV)
            beta = site(name("beta"), t, 2 * beta if cfg.get("allow_neg_eigval") and gated else beta)
            decay = np.ones(HV)
            if gated:
                rate = np.exp(w[a + "A_log"]) * np.log1p(np.exp(w[a + "a_proj.weight"] @ n + w[a + "dt_bias"]))
                decay = site(name("decay"), t, np.exp(-rate))
            qh = lambda h: h // (HV // H)  # noqa: E731  the q/k head of value head h
            S = np.stack([decay[h] * (np.eye(dk) - beta[h] * np.outer(kk[qh(h)], kk[qh(h)])) @ S[h]
                          + beta[h] * np.outer(kk[qh(h)], v[h])
                          for h in range(HV)])  # S_t = decay (I - beta k k^T) S_(t-1) + beta k v^T
            S = site(name("state"), t, S)
            o = np.stack([S[h].T @ q[qh(h)] for h in range(HV)]) / math.sqrt(dk)
            o = site(name("o"), t, o.reshape(-1))
            y = _rms(o.reshape(HV, dv), w[a + "o_norm.weight"], eps).reshape(-1)
            if cfg["use_gate"]:
                gate = site(name("g"), t, _silu(w[a + "g_proj.weight"] @ n))
                y = y * gate
            y = site(name("y"), t, y)
            mix = site(name("mixer"), t, w[a + "o_proj.weight"] @ y)
            mid = site(name("mid"), t, x + mix)
            m = _rms(mid, w[p + "mlp_norm.weight"], eps)
            mlp = w[p + "mlp.down_proj.weight"] @ (_silu(w[p + "mlp.gate_proj.weight"] @ m) * (w[p + "mlp.up_proj.weight"] @ m))
            mlp = site(name("mlp"), t, mlp)
            outs.append(site(name("out"), t, mid + mlp))
        xs = outs
    head = w.get("lm_head.weight", E)
    for t in range(T):
        site("logits", t, head @ _rms(xs[t], w["model.norm.weight"], eps))
    return {k: np.stack(v) for k, v in rec.items()}


def reference_attention(q, k, beta, decay=None):
    """alpha [T, T, H] from the product form: alpha_ij = beta_j k_j^T a_(j+1) (I - beta_(j+1) k k^T)
    ... a_i (I - beta_i k_i k_i^T) q_i / sqrt(d_k) for j <= i, 0 above the diagonal.  ``q``,
    ``k`` [T, H, d_k] (q unscaled), ``beta`` and the decays a (1 without) [T, H]; float64."""
    T, H, dk = q.shape
    decay = np.ones((T, H)) if decay is None else decay
    alpha = np.zeros((T, T, H))
    for h in range(H):
        for i in range(T):
            g = q[i, h] / math.sqrt(dk)  # a_m (I - b_m k_m k_m^T) ... q_i, built from m = i down to j + 1
            for j in range(i, -1, -1):
                alpha[i, j, h] = beta[j, h] * (k[j, h] @ g)
                g = decay[j, h] * (g - beta[j, h] * k[j, h] * (k[j, h] @ g))
    return alpha
