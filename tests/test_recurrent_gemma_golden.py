"""RecurrentGemma (Griffin): logits and every probe vs ``transformers``' ``RecurrentGemmaForCausalLM``
(internals read with forward hooks: its ``output_hidden_states`` leaves out the last layer's
output and starts with the scaled embedding) and vs the float64 step-by-step loop in
``recurrent_gemma_reference.py``; random tiny configs of several shapes, batch 2, lengths from 1
to 300 with chunks of 64 (so chunk boundaries, the attention window and its key buffer are
crossed).

Tolerances: vs transformers (float32 both) 2e-5 absolute and relative on every probe and the
logits (it takes a^2 as exp(2 log a) and runs a Conv1d kernel: measured differences <= 6e-7
relative to the largest value); vs the float64 loop 1e-10 (float64 models, both scans; measured
6e-16) and 5e-5 (float32; measured 2e-6).
"""
import numpy as np
import pytest
import torch

import engine
from engine.models.mamba import numba_available
from engine.models.recurrent_gemma import RecurrentGemmaConfig
from engine.models.recurrent_gemma_loading import from_transformers
from recurrent_gemma_reference import reference

transformers = pytest.importorskip("transformers")

SCANS = ["torch"] + (["numba"] if numba_available() else [])

#: (hidden, heads, kv heads, lru width, window, layers, block types, conv width, activation, rotary share, bias)
CASES = {
    "mqa-w8": (32, 4, 1, 48, 8, 3, ("recurrent", "recurrent", "attention"), 4, "gelu_pytorch_tanh", 0.5, False),
    "kv2-w64": (24, 2, 2, 24, 64, 4, ("recurrent", "attention"), 3, "gelu", 1.0, True),
}


def hf_model(case="mqa-w8", seed=0, rope_theta=500.0):
    """A random ``RecurrentGemmaForCausalLM`` whose norms, biases and gates are far from their
    initial values (zeros, and gates near 0.5 at transformers' init), so that each matters."""
    d, H, kv, lru, win, L, types, K, act, rot, bias = CASES[case]
    torch.manual_seed(seed)
    cfg = transformers.RecurrentGemmaConfig(
        num_hidden_layers=L, vocab_size=37, hidden_size=d, intermediate_size=3 * d, num_attention_heads=H,
        num_key_value_heads=kv, lru_width=lru, attention_window_size=win, block_types=list(types),
        conv1d_width=K, hidden_activation=act, attention_bias=bias,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "partial_rotary_factor": rot},
        attn_implementation="eager")
    model = transformers.RecurrentGemmaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
            if "gate_weight" in name:
                p.add_(0.4 * torch.randn_like(p))
    return model


def weights64(hf) -> dict:
    return {k: v.detach().double().numpy() for k, v in hf.state_dict().items() if k != "lm_head.weight"}


def our_config(hf) -> RecurrentGemmaConfig:
    return from_transformers(hf).config


def capture(hf, ids: torch.Tensor) -> dict:
    """transformers' internals as our probes (batch-major [B, T, ...]) and its logits."""
    got, hooks = {}, []
    T = ids.shape[1]

    def keep(name, f=lambda args, out: out):
        return lambda mod, args, out: got.__setitem__(name, f(args, out).detach())

    for k, layer in enumerate(hf.model.layers):
        tb = layer.temporal_block
        hooks.append(layer.temporal_pre_norm.register_forward_hook(keep(f"layers.{k}.in")))
        hooks.append(layer.register_forward_hook(keep(f"layers.{k}.out")))
        # the temporal block's output before the residual add, the stream after it, the MLP's output
        hooks.append(tb.register_forward_hook(keep(f"layers.{k}.mixer", lambda a, o: o[0] if isinstance(o, tuple) else o)))
        hooks.append(layer.channel_pre_norm.register_forward_hook(keep(f"layers.{k}.mid", lambda a, o: a[0])))
        hooks.append(layer.mlp_block.register_forward_hook(keep(f"layers.{k}.mlp")))
        if hasattr(tb, "rg_lru"):
            hooks.append(tb.act_fn.register_forward_hook(keep(f"layers.{k}.y_branch")))
            hooks.append(tb.linear_x.register_forward_hook(keep(f"layers.{k}.x_branch")))
            hooks.append(tb.conv_1d.register_forward_hook(keep(f"layers.{k}.conv", lambda a, o: o[..., :T].transpose(1, 2))))
            hooks.append(tb.rg_lru.register_forward_hook(keep(f"layers.{k}.state")))
            hooks.append(tb.linear_out.register_forward_hook(keep(f"layers.{k}.mix", lambda a, o: a[0])))
        else:
            hooks.append(tb.q_proj.register_forward_hook(keep(f"layers.{k}.q")))
            hooks.append(tb.k_proj.register_forward_hook(keep(f"layers.{k}.k")))
            hooks.append(tb.v_proj.register_forward_hook(keep(f"layers.{k}.v")))
            hooks.append(tb.o_proj.register_forward_hook(keep(f"layers.{k}.o", lambda a, o: a[0])))
    try:
        with torch.no_grad():
            res = hf(ids, use_cache=False, output_attentions=True, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    got["embed"] = res.hidden_states[0]  # the one hidden state transformers gives as we do: scaled
    got["logits"] = res.logits
    B = ids.shape[0]
    att = iter(res.attentions)
    pos = torch.arange(T)[None].expand(B, T)
    for k, layer in enumerate(hf.model.layers):
        tb = layer.temporal_block
        if hasattr(tb, "rg_lru"):
            continue
        got[f"layers.{k}.attn"] = next(att).mean(1)  # [B, T, T]
        hd = tb.head_dim
        q = got[f"layers.{k}.q"].view(B, T, -1, hd).transpose(1, 2)
        kk = got[f"layers.{k}.k"].view(B, T, -1, hd).transpose(1, 2)
        cos, sin = tb.rotary_emb(q, pos)
        q, kk = transformers.models.recurrent_gemma.modeling_recurrent_gemma.apply_rotary_pos_emb(q, kk, cos, sin)
        got[f"layers.{k}.q"] = q.transpose(1, 2).reshape(B, T, -1)
        got[f"layers.{k}.k"] = kk.transpose(1, 2).reshape(B, T, -1)
    return got


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("T", [1, 300])
def test_every_probe_matches_transformers(case, scan, T):
    hf = hf_model(case, seed=1)
    model = from_transformers(hf, scan=scan)
    model.attention_window = ((0, T), (0, T))
    ids = torch.tensor(np.random.default_rng(2).integers(0, 37, (2, T)))
    ref = capture(hf, ids)
    trace = engine.run(model, list(ids.numpy()), chunk=64)
    checked = 0
    for name, expected in ref.items():
        for b in range(2):
            torch.testing.assert_close(torch.tensor(trace.array(name, b)), expected[b].float(), atol=2e-5, rtol=2e-5,
                                       msg=lambda m: f"{name}, sequence {b}: {m}")
        checked += 1
    missing = {n for n in trace.probes if n not in ref and not n.endswith(".attn")}
    assert missing == {n for n in trace.probes if n.split(".")[-1] in ("gate_r", "gate_i", "a")}
    assert checked >= 8


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_probe_matches_the_float64_loop(case, dtype, scan):
    hf = hf_model(case, seed=3)
    model = from_transformers(hf, dtype=dtype, scan=scan)
    w, cfg = weights64(hf), model.config
    seqs = [np.random.default_rng(4).integers(0, 37, 150), np.random.default_rng(5).integers(0, 37, 1),
            np.random.default_rng(6).integers(0, 37, 71)]
    trace = engine.run(model, seqs, chunk=32)
    tol = 5e-5 if dtype == torch.float32 else 1e-10
    for s, ids in enumerate(seqs):
        ref = reference(w, ids, cfg)
        assert set(ref) == {n for n in trace.probes if not n.endswith(".attn")}
        for name, expected in ref.items():
            np.testing.assert_allclose(trace.array(name, s), expected, atol=tol, rtol=tol, err_msg=f"{name} seq {s}")


def test_the_config_is_read_from_the_transformers_model():
    hf = hf_model("kv2-w64")
    cfg = our_config(hf)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.lru_width) == (24, 2, 2, 24)
    assert (cfg.attention_window_size, cfg.conv1d_width, cfg.rope_theta, cfg.partial_rotary_factor) == (64, 3, 500.0, 1.0)
    assert [cfg.kind(k) for k in range(4)] == ["recurrent", "attention"] * 2
    assert cfg.hidden_activation == "gelu" and cfg.attention_bias
