"""An independent float64 GLA / RetNet, and fla-layout checkpoints for the tests.

``reference_lm`` steps the recurrent form of each paper one token at a time in NumPy, written
without any engine code: ``S_t = diag(a_t) S_(t-1) + k_t^T v_t``, ``o_t = (q_t / sqrt(K)) S_t`` per
head (GLA: ``log a_t = logsigmoid(gk_proj(u_t)) / 16``, clamped; RetNet: ``a = 1 - 2^(-5-h)`` and
rotary embeddings on q and k), fla's output norm and swish gate, the SwiGLU MLP, RMSNorms.

``random_checkpoint`` builds a random state dict with the exact key names and shapes of fla's
``GLAForCausalLM`` / ``RetNetForCausalLM`` (``fla/layers/gla.py``, ``fla/layers/multiscale_retention.py``,
``fla/modules/mlp.py``) and the ``config.json`` fla's ``save_pretrained`` writes for it (the
``GLAConfig`` / ``RetNetConfig`` keys); ``save_fla_folder`` writes both as ``save_pretrained``
does (``config.json`` + ``model.safetensors``, a tied ``lm_head`` left out).

``overrides`` edit a value by hand: ``{(probe, t): f}`` with probe ``layers.{k}.{site}``, ``f(value)
-> value`` (``state``: the [H*K, V] array after step t).  ``state0 = {layer: [H*K, V]}`` starts a
layer from a state; ``start_layer_input`` replaces the embedding rows; ``start_position`` is the
position of the first token (RetNet's rotary embeddings).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def _rms(x, w, eps):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y if w is None else y * w


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


FEATURE = {None: lambda x: x, "relu": lambda x: np.maximum(x, 0), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
           "swish": _silu}


def float64_weights(sd: dict) -> dict:
    return {k: v.detach().double().cpu().numpy() for k, v in sd.items()}


def reference_lm(w: dict, config: dict, ids, overrides=None, state0=None, start_layer_input=None, start_position=0,
                 conv0=None):
    """One sequence.  ``w``: float64 arrays with fla names; ``config``: the fla ``config.json``
    dict.  Returns ``{probe: [T, ...]}`` for embed, every layer site but attn, and logits.
    ``conv0 = {layer: {"q": rows, "k": rows, "v": rows}}``: the short convolutions' inputs
    before step 0 (oldest first)."""
    overrides = overrides or {}
    state0, conv0 = state0 or {}, conv0 or {}
    c = config
    family = c["model_type"]
    L, H = c["num_hidden_layers"], c["num_heads"]
    Hkv = c.get("num_kv_heads") or H
    grp = H // Hkv
    eps = c.get("norm_eps", 1e-6)
    phi = FEATURE[c.get("feature_map")]
    conv = bool(c.get("use_short_conv")) and family == "gla"
    Kc = c.get("conv_size", 4)
    rec: dict[str, list] = {}

    def site(name, t, v):
        f = overrides.get((name, t))
        if f is not None:
            v = f(np.array(v, dtype=np.float64))
        rec.setdefault(name, []).append(np.array(v, dtype=np.float64))
        return v

    T = len(ids)
    xs = [start_layer_input[t] if start_layer_input is not None else w["model.embeddings.weight"][ids[t]]
          for t in range(T)]
    xs = [site("embed", t, x) for t, x in enumerate(xs)]
    for li in range(L):
        p = f"model.layers.{li}."
        a = p + "attn."
        Kd = w[a + "q_proj.weight"].shape[0] // H
        Vd = w[a + "o_proj.weight"].shape[1] // H
        S = np.zeros((H, Kd, Vd)) if li not in state0 else np.array(state0[li], dtype=np.float64).reshape(H, Kd, Vd)
        hist = {m: [np.array(r, dtype=np.float64) for r in conv0[li][m]] if li in conv0 else [] for m in "qkv"}
        before = len(hist["q"])  # rows before step 0
        norm_w = w.get(a + "g_norm_swish_gate.weight", w.get(a + "g_norm.weight"))
        gamma = 1 - 2.0 ** (-5.0 - np.arange(H))
        inv_freq = 1.0 / (10000.0 ** (np.arange(0, Kd, 2) / Kd))
        outs = []
        for t in range(T):
            pre = f"layers.{li}."
            x = xs[t]
            u = site(pre + "in", t, _rms(x, w[p + "attn_norm.weight"], eps))
            proj = {m: w[a + f"{m}_proj.weight"] @ u for m in "qkv"}
            if conv:
                for m in "qkv":
                    hist[m].append(proj[m])
                    cw = w[a + f"{m}_conv1d.weight"][:, 0, :]
                    acc = w.get(a + f"{m}_conv1d.bias", np.zeros(cw.shape[0])).copy()
                    for j in range(Kc):  # tap j sees the input j steps before the last tap
                        src = t - (Kc - 1) + j
                        if src >= -before:
                            acc += cw[:, j] * hist[m][src + before]
                    proj[m] = _silu(acc)
            q, k, v = phi(proj["q"]), phi(proj["k"]), proj["v"]
            if family == "retnet":
                ang = (start_position + t) * inv_freq
                cos, sin = np.cos(ang), np.sin(ang)

                def rot(z):
                    z = z.reshape(-1, Kd)
                    z1, z2 = z[:, :Kd // 2], z[:, Kd // 2:]
                    return np.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], -1).reshape(-1)

                q, k = rot(q), rot(k)
            q, k, v = site(pre + "q", t, q), site(pre + "k", t, k), site(pre + "v", t, v)
            if family == "gla":
                gk = w[a + "gk_proj.1.weight"] @ (w[a + "gk_proj.0.weight"] @ u) + w[a + "gk_proj.1.bias"]
                gate = _logsigmoid(gk) / c.get("gate_logit_normalizer", 16)
                if c.get("clamp_min") is not None:
                    gate = np.maximum(gate, c["clamp_min"])
                gate = site(pre + "gate", t, gate)
            qh, kh, vh = q.reshape(H, Kd), k.reshape(Hkv, Kd), v.reshape(Hkv, Vd)
            o = np.zeros((H, Vd))
            for h in range(H):
                decay = np.exp(gate.reshape(Hkv, Kd)[h // grp]) if family == "gla" else np.full(Kd, gamma[h])
                S[h] = decay[:, None] * S[h] + np.outer(kh[h // grp], vh[h // grp])
            S = site(pre + "state", t, S.reshape(H * Kd, Vd)).reshape(H, Kd, Vd)
            for h in range(H):
                o[h] = (qh[h] * Kd ** -0.5) @ S[h]
            o = site(pre + "o", t, o.reshape(-1))
            y = _rms(o.reshape(H, Vd), norm_w, eps).reshape(-1)
            if a + "g_proj.weight" in w:
                g = site(pre + "g", t, w[a + "g_proj.weight"] @ u)
                y = y * _silu(g)
            mixer = site(pre + "mixer", t, w[a + "o_proj.weight"] @ y)
            x2 = site(pre + "mid", t, x + mixer)
            n = _rms(x2, w[p + "mlp_norm.weight"], eps)
            mlp = w[p + "mlp.down_proj.weight"] @ (_silu(w[p + "mlp.gate_proj.weight"] @ n) * (w[p + "mlp.up_proj.weight"] @ n))
            mlp = site(pre + "mlp", t, mlp)
            outs.append(site(pre + "out", t, x2 + mlp))
        xs = outs
    head = w.get("lm_head.weight", w["model.embeddings.weight"])
    for t in range(T):
        site("logits", t, head @ _rms(xs[t], w["model.norm.weight"], eps))
    return {k: np.stack(v) for k, v in rec.items()}


# ======================================================================================
# fla-layout checkpoints
# ======================================================================================


def fla_config(family="gla", vocab=37, d=16, layers=2, heads=2, kv_heads=None, expand_k=None, expand_v=None,
               ffn=None, **kw) -> dict:
    """The ``config.json`` fla writes for a ``GLAConfig`` / ``RetNetConfig`` with these values."""
    cfg = {"model_type": family, "architectures": ["GLAForCausalLM" if family == "gla" else "RetNetForCausalLM"],
           "hidden_size": d, "num_hidden_layers": layers, "num_heads": heads, "num_kv_heads": kv_heads,
           "expand_k": expand_k if expand_k is not None else (0.5 if family == "gla" else 1.0),
           "expand_v": expand_v if expand_v is not None else (1 if family == "gla" else 2.0),
           "hidden_ratio": 4 if family == "gla" else 2, "intermediate_size": ffn, "feature_map": None,
           "attn_mode": "chunk", "use_short_conv": False, "conv_size": 4, "use_output_gate": True,
           "hidden_act": "swish", "max_position_embeddings": 2048, "elementwise_affine": True, "norm_eps": 1e-6,
           "attn": None, "use_cache": True, "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "initializer_range": 0.02, "fuse_norm": True, "fuse_swiglu": True,
           "fuse_cross_entropy": True, "vocab_size": vocab, "transformers_version": "4.53.0"}
    if family == "gla":
        cfg.update({"clamp_min": None, "use_gk": True, "use_gv": False})
    cfg.update(kw)
    return cfg


def _ffn_size(cfg):
    if cfg.get("intermediate_size"):
        return cfg["intermediate_size"]
    n = int(cfg["hidden_size"] * cfg["hidden_ratio"] * 2 / 3)
    return 256 * ((n + 255) // 256)


def random_checkpoint(cfg: dict, seed=0, gate_rank=16) -> dict:
    """A random state dict with fla's names and shapes for ``cfg`` (livelier than fla's init:
    O(1) embeddings, norm weights around 1, gates spread so decays range from fast to slow)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=1.0: torch.randn(*shape, generator=g) * s  # noqa: E731
    d, H = cfg["hidden_size"], cfg["num_heads"]
    Hkv = cfg.get("num_kv_heads") or H
    grp = H // Hkv
    kd, vd = round(d * cfg["expand_k"]), round(d * cfg["expand_v"])
    F_ = _ffn_size(cfg)
    family = cfg["model_type"]
    sd = {"model.embeddings.weight": rnd(cfg["vocab_size"], d)}
    for i in range(cfg["num_hidden_layers"]):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.attn."
        sd[p + "attn_norm.weight"] = 1 + rnd(d, s=0.1)
        sd[a + "q_proj.weight"] = rnd(kd, d, s=d ** -0.5)
        sd[a + "k_proj.weight"] = rnd(kd // grp, d, s=d ** -0.5)
        sd[a + "v_proj.weight"] = rnd(vd // grp, d, s=d ** -0.5)
        if cfg.get("use_output_gate", True):
            sd[a + "g_proj.weight"] = rnd(vd, d, s=d ** -0.5)
        if cfg.get("use_short_conv") and family == "gla":
            for m, width in (("q", kd), ("k", kd // grp), ("v", vd // grp)):
                sd[a + f"{m}_conv1d.weight"] = rnd(width, 1, cfg.get("conv_size", 4), s=0.5)
        if family == "gla":
            sd[a + "gk_proj.0.weight"] = rnd(gate_rank, d, s=d ** -0.5)
            sd[a + "gk_proj.1.weight"] = rnd(kd // grp, gate_rank, s=gate_rank ** -0.5)
            sd[a + "gk_proj.1.bias"] = torch.linspace(-2.0, 6.0, kd // grp)
        sd[a + "o_proj.weight"] = rnd(d, vd, s=vd ** -0.5)
        if cfg.get("elementwise_affine", True):
            name = "g_norm_swish_gate" if cfg.get("fuse_norm", True) and cfg.get("use_output_gate", True) else "g_norm"
            sd[a + name + ".weight"] = 1 + rnd(vd // H, s=0.1)
        sd[p + "mlp_norm.weight"] = 1 + rnd(d, s=0.1)
        sd[p + "mlp.gate_proj.weight"] = rnd(F_, d, s=d ** -0.5)
        sd[p + "mlp.up_proj.weight"] = rnd(F_, d, s=d ** -0.5)
        sd[p + "mlp.down_proj.weight"] = rnd(d, F_, s=F_ ** -0.5)
    sd["model.norm.weight"] = 1 + rnd(d, s=0.1)
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = rnd(cfg["vocab_size"], d, s=d ** -0.5)
    return sd


def save_fla_folder(folder, sd: dict, cfg: dict) -> Path:
    """Write ``config.json`` + ``model.safetensors`` as fla's ``save_pretrained`` does."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def load_fla_naive(op: str):
    """fla's ``fla/ops/<op>/naive.py`` loaded by path (``import fla.ops`` needs triton), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("fla")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "ops" / op / "naive.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location(f"fla_naive_{op}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod
