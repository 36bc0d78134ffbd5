"""HGRN (flash-linear-attention layout): every probe and the logits vs a float64 step-by-step
loop written from the equations (``tests/hgrn_reference.py``), the recurrence vs fla's own
``naive_recurrent_hgrn`` (loaded by path: fla's models cannot run on this CPU), the implicit
attention reproducing the state, interventions inside the recurrence, exact cached re-runs,
and loading folders with fla's key names and config.json.

Tolerances: vs the float64 loop 3e-5 (float32 models, up to 300 steps) and 1e-10 (float64);
vs fla's naive loop 1e-5 (float32 both); attention identity 1e-8 (float64); cached re-runs
and causality bit for bit.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from diagonal_checks import assert_cached_rerun_is_shorter_and_exact, assert_edit_is_causal, \
    assert_every_probe_matches, assert_not_claimed
from engine import Intervention, LoadError, Span
from engine.models import hgrn, lru
from family_checks import assert_typing_sessions_match_full_runs
from engine.models.hgrn import HGRNConfig, HGRNModel, canonical_weight_shapes
from engine.models.mingru import gated_attention
from hgrn_reference import reference


def make(d=12, layers=2, vocab=23, conv=0, lower_bound=True, expand=1, tie=False, gate_norm=True, ff=20, seed=0,
         dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    cfg = HGRNConfig(d_model=d, n_layer=layers, vocab_size=vocab, d_inner=d * expand, ff_inner=ff, conv_size=conv,
                     lower_bound=lower_bound, gate_norm_weight=gate_norm, tie_embeddings=tie)
    w = {k: torch.randn(s, dtype=torch.float64) * 0.4 for k, s in canonical_weight_shapes(cfg).items()}
    for k in w:
        if k.endswith("norm.weight"):
            w[k] = 1 + 0.1 * torch.randn_like(w[k])
    if lower_bound:
        w["model.lower_bounds"] = torch.randn(layers, d, dtype=torch.float64)
    return HGRNModel(cfg, w, dtype=dtype, device=device), {k: v.numpy() for k, v in w.items()}, cfg


CASES = {"plain": {}, "conv-tied": {"d": 16, "conv": 4, "tie": True},
         "expand-nolb-noaffine": {"d": 8, "expand": 2, "lower_bound": False, "gate_norm": False, "conv": 3, "layers": 3}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_every_probe_matches_the_float64_reference(case, dtype):
    model, w, cfg = make(**CASES[case], dtype=dtype)
    assert_every_probe_matches(model, lambda ids: reference(w, ids, cfg))


def _fla_naive():
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "ops" / "hgrn" / "naive.py"
    if not path.is_file():
        pytest.skip("fla/ops/hgrn/naive.py not found")
    mod_spec = importlib.util.spec_from_file_location("fla_hgrn_naive", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.naive_recurrent_hgrn


def test_the_state_matches_fla_naive_recurrent_hgrn():
    naive = _fla_naive()
    model, w, cfg = make(d=16, conv=4)
    seqs = [np.random.default_rng(L).integers(0, 23, L) for L in (200, 77)]
    trace = engine.run(model, seqs, chunk=64)
    for k in range(cfg.n_layer):
        for b in range(len(seqs)):
            f, i, h = (torch.tensor(trace.array(f"layers.{k}.{s}", b))[None] for s in ("f", "i", "state"))
            o, _ = naive((1 - f) * i, f.log())  # fla's layer: x = swiglu(i, 1 - f), g = log f
            torch.testing.assert_close(o, h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["plain", "conv-tied"])
def test_attention_reproduces_the_state_in_float64(case):
    model, w, cfg = make(**CASES[case], dtype=torch.float64)
    T = 90
    ids = np.random.default_rng(5).integers(0, 23, T)
    trace = engine.run(model, ids, chunk=32)
    for k in range(cfg.n_layer):
        f, i = torch.tensor(trace[f"layers.{k}.f"]), torch.tensor(trace[f"layers.{k}.i"])
        alpha = gated_attention(f, 1 - f, (0, T), (0, T), reduce=None)
        h = torch.einsum("ijc,jc->ic", alpha, i)
        torch.testing.assert_close(h, torch.tensor(trace[f"layers.{k}.state"]), atol=1e-8, rtol=1e-8)
        rows, cols = (30, 70), (10, 60)
        part = gated_attention(f, 1 - f, rows, cols, reduce=None)
        torch.testing.assert_close(part, alpha[30:70, 10:60], atol=1e-14, rtol=1e-12)
        # the sub-window reproduces the state's part made of steps 10..59, from the state at step 9
        decay = torch.cumprod(f[10:70], 0)[20:]  # prod_(k=10..i) f_k for rows 30..69
        h_win = torch.einsum("ijc,jc->ic", part, i[10:60])
        expected = torch.tensor(trace[f"layers.{k}.state"])[30:70] - decay * torch.tensor(trace[f"layers.{k}.state"])[9]
        later = torch.einsum("ijc,jc->ic", alpha[30:70, 60:70], i[60:70])
        torch.testing.assert_close(h_win + later, expected, atol=1e-8, rtol=1e-8)
    model.attention_window = ((10, 40), (0, 30))
    att = engine.run(model, ids, chunk=32, probes="layers.1.attn")["layers.1.attn"]
    assert att.shape == (T, 30) and np.isnan(att[:10]).all() and np.isnan(att[40:]).all()
    f = torch.tensor(trace["layers.1.f"])
    np.testing.assert_allclose(att[10:40], gated_attention(f, 1 - f, (0, T), (0, T), reduce=None)[10:40, :30].mean(-1),
                               atol=1e-14)


@pytest.mark.parametrize("site", ["in", "i", "f", "g", "state", "o", "mixer", "mid", "mlp", "out"])
def test_steps_before_t_are_bit_identical_and_later_steps_change(site):
    assert_edit_is_causal(make(conv=3)[0], f"layers.0.{site}", 23)


def test_editing_the_gate_and_the_state_matches_the_reference():
    model, w, cfg = make(conv=3, dtype=torch.float64)
    x = np.random.default_rng(7).integers(0, 23, 80)
    ivs = [Intervention("layers.0.f", "set", 0.0, positions=[12], units=[0, 4]),  # forget: a zero gate
           Intervention("layers.1.state", "zero", positions=Span(40, 43), units=[2]),
           Intervention("layers.1.f", "scale", -1.0, positions=[50])]  # a negative gate is exact too

    def gate(v):
        v[[0, 4]] = 0.0
        return v

    def zero(v):
        v[2] = 0
        return v

    ov = {("layers.0.f", 12): gate, ("layers.1.f", 50): lambda v: -v, **{("layers.1.state", t): zero for t in range(40, 43)}}
    tr = engine.run(model, x, interventions=ivs, chunk=32)
    for name, expected in reference(w, x, cfg, overrides=ov).items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_patched_state_equals_running_the_suffix_from_that_state():
    model, w, cfg = make(conv=3, layers=1, dtype=torch.float64)
    a, b = (np.random.default_rng(s).integers(0, 23, 70) for s in (8, 9))
    t = 37
    src = engine.run(model, a, chunk=32)
    tr = engine.run(model, b, chunk=32,
                    interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    u = tr["layers.0.in"][t - 1:t + 1]  # the conv buffers: the projections of steps t-1, t
    state0 = {0: (src["layers.0.state"][t], u @ w["model.layers.0.attn.i_proj.weight"].T,
                  u @ w["model.layers.0.attn.f_proj.weight"].T)}
    ref = reference(w, None, cfg, state0=state0, start=tr["embed"][t + 1:])
    for site in ("state", "o", "out"):
        np.testing.assert_allclose(tr[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"], atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(tr["logits"][t + 1:], ref["logits"], atol=1e-10, rtol=1e-10)


def test_attn_takes_no_interventions():
    model, w, cfg = make()
    with pytest.raises(Exception, match="computed from the recorded gates"):
        engine.run(model, np.arange(10), interventions=[Intervention("layers.0.attn", "zero")])


# -- the prefix cache -------------------------------------------------------------------------


def test_a_cached_rerun_starts_at_the_chunk_before_the_edit_and_equals_a_full_run():
    assert_cached_rerun_is_shorter_and_exact(make(conv=3, layers=3)[0], 23)


def test_random_edit_sessions_always_match_full_runs():
    assert_typing_sessions_match_full_runs(make(conv=3)[0], 23)


# -- loading ------------------------------------------------------------------------------------


def fla_folder(path: Path, model: HGRNModel, **config) -> Path:
    """What ``HGRNForCausalLM.save_pretrained`` writes: fla's config.json keys and
    ``model.safetensors`` with fla's parameter names (lm_head left out when tied)."""
    from safetensors.torch import save_file

    cfg = model.config
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    c = {"architectures": ["HGRNForCausalLM"], "model_type": "hgrn", "attn_mode": "fused_recurrent",
         "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer, "expand_ratio": cfg.d_inner // cfg.d_model,
         "use_short_conv": bool(cfg.conv_size), "conv_size": cfg.conv_size or 4, "use_lower_bound": cfg.lower_bound,
         "max_position_embeddings": 2048, "hidden_ratio": 4, "intermediate_size": cfg.ff_inner, "hidden_act": "swish",
         "elementwise_affine": cfg.gate_norm_weight, "norm_eps": cfg.norm_eps, "attn": None, "use_cache": True,
         "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": cfg.tie_embeddings,
         "initializer_range": 0.02, "fuse_norm": True, "fuse_swiglu": True, "fuse_cross_entropy": True,
         "fuse_linear_cross_entropy": False, "use_l2warp": False, "vocab_size": cfg.vocab_size,
         "transformers_version": "4.57.0", "torch_dtype": "float32", **config}
    (path / "config.json").write_text(json.dumps(c, indent=2))
    return path


@pytest.mark.parametrize("case", CASES)
def test_an_fla_folder_loads_unchanged(tmp_path, case):
    model, w, cfg = make(**CASES[case])
    folder = fla_folder(tmp_path / "m", model)
    again = engine.load(folder, device="cpu")
    assert isinstance(again, HGRNModel) and again.config == cfg
    assert again.info()["layout"] == "flash-linear-attention HGRNForCausalLM"
    ids = np.random.default_rng(0).integers(0, 23, 70)
    np.testing.assert_array_equal(engine.run(again, ids)["logits"], engine.run(model, ids)["logits"])


def test_intermediate_size_follows_fla_rule_when_the_config_leaves_it_out(tmp_path):
    model, w, cfg = make(d=16, ff=256)  # int(16 * 4 * 2/3) = 42, rounded up to a multiple of 256
    folder = fla_folder(tmp_path / "m", model, intermediate_size=None)
    assert engine.load(folder, device="cpu").config.ff_inner == 256
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "hidden_ratio": 8}))  # 86 -> 256 too
    assert engine.load(folder, device="cpu").config.ff_inner == 256


def test_seqscope_file_round_trip(tmp_path):
    from engine.loading import save_model

    model, w, cfg = make(conv=4)
    again = engine.load(save_model(model, tmp_path / "m.safetensors"), device="cpu")
    assert again.config == cfg
    ids = np.arange(40) % 23
    np.testing.assert_array_equal(engine.run(again, ids)["logits"], engine.run(model, ids)["logits"])


def test_wrong_or_missing_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    model, w, cfg = make(conv=3)
    folder = fla_folder(tmp_path / "m", model)
    sd = load_file(folder / "model.safetensors")
    sd.pop("model.layers.1.attn.g_proj.weight")
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(LoadError, match=r"model\.layers\.1\.attn\.g_proj\.weight"):
        engine.load(folder, device="cpu")
    sd = {k: v for k, v in load_file(fla_folder(tmp_path / "n", model) / "model.safetensors").items()}
    sd["model.layers.0.attn.i_conv1d.weight"] = torch.zeros(12, 1, 5)
    sd["model.layers.0.attn.q_extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "n" / "model.safetensors")
    with pytest.raises(LoadError, match=r"i_conv1d\.weight is \[12, 1, 5\], expected \[12, 1, 3\]") as err:
        engine.load(tmp_path / "n", device="cpu")
    assert "q_extra" in str(err.value)
    fla_folder(tmp_path / "h", model, attn={"layers": [1], "num_heads": 2})
    with pytest.raises(LoadError, match="softmax-attention layers"):
        engine.load(tmp_path / "h", device="cpu")


def test_other_families_are_not_claimed(tmp_path):
    assert_not_claimed(hgrn, tmp_path)
    hg = make()[0].state_dict()
    assert hgrn.looks_like(hg, []) and not lru.looks_like(hg, [])
    hgrn2 = {**hg, **{k.replace("g_proj", "q_proj"): v for k, v in hg.items() if "g_proj" in k}}  # HGRN2's keys
    assert not hgrn.looks_like(hgrn2, [])
