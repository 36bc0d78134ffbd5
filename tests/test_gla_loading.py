"""Loading GLA / RetNet checkpoints in flash-linear-attention's layout: folders as fla's
``save_pretrained`` writes them (``config.json`` with fla's keys + ``model.safetensors`` with its
names; built by tests/gla_reference.py, since fla's model classes cannot be built here) load with
no config editing and give the float64 reference's logits (float32 within 2e-4); wrong, missing
or extra keys give a LoadError naming them; other families' checkpoints are not claimed."""
import json

import numpy as np
import pytest
import torch

import engine
from engine import LoadError
from engine.models import gla_loading, mamba, mingru, rwkv_loading
from engine.models.gla import LinearAttentionModel
from gla_reference import fla_config, float64_weights, random_checkpoint, reference_lm, save_fla_folder

VARIANTS = [
    ("gla", {}),
    ("gla", {"tie_word_embeddings": True, "use_short_conv": True, "num_kv_heads": 1}),
    ("gla", {"fuse_norm": False, "clamp_min": -0.2}),
    ("gla", {"use_output_gate": False, "elementwise_affine": False}),
    ("retnet", {}),
    ("retnet", {"tie_word_embeddings": True, "fuse_norm": False, "num_heads": 4, "num_kv_heads": 2, "hidden_size": 32}),
]


def folder_for(tmp_path, family, seed=0, **kw):
    cfg = fla_config(family, **kw)
    sd = random_checkpoint(cfg, seed)
    return save_fla_folder(tmp_path / f"{family}-{seed}", sd, cfg), sd, cfg


@pytest.mark.parametrize("family,extra", VARIANTS)
def test_fla_folder_loads_unchanged(tmp_path, family, extra):
    folder, sd, cfg = folder_for(tmp_path, family, 40, **extra)
    model = engine.load(folder, device="cpu")
    assert isinstance(model, LinearAttentionModel)
    info = model.info()
    assert info["architecture"] == family and info["layout"] == f"flash-linear-attention {family}"
    assert info["format"] == "safetensors"
    x = np.random.default_rng(0).integers(0, 37, 80)
    want = reference_lm(float64_weights(sd), cfg, x)["logits"]
    np.testing.assert_allclose(engine.run(model, x, probes="logits")["logits"], want, atol=2e-4, rtol=2e-4)
    assert isinstance(engine.load(folder / "config.json", device="cpu"), LinearAttentionModel)
    assert json.loads(info["config"])["family"] == family


def test_the_configs_key_names_decide_the_output_norm(tmp_path):
    folder, _, _ = folder_for(tmp_path, "gla", 41, fuse_norm=False)
    model = engine.load(folder, device="cpu")
    assert "model.layers.0.attn.g_norm.weight" in model.state_dict()
    assert not any("g_norm_swish_gate" in k for k in model.state_dict())


def rewrite(folder, edit):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"))


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("model.layers.1.attn.gk_proj.1.bias"), "missing model.layers.1.attn.gk_proj.1.bias"),
    (lambda sd: sd.update({"model.layers.0.attn.v_proj.weight": torch.zeros(5, 16)}),
     r"model.layers.0.attn.v_proj.weight is \[5, 16\], expected \[16, 16\]"),
    (lambda sd: sd.update({"model.layers.0.attn.extra.weight": torch.zeros(2)}), "unexpected model.layers.0.attn.extra"),
    (lambda sd: sd.pop("lm_head.weight"), "lm_head"),
])
def test_wrong_or_missing_keys_give_a_load_error_naming_them(tmp_path, edit, message):
    folder, _, _ = folder_for(tmp_path, "gla", 42)
    rewrite(folder, edit)
    with pytest.raises(LoadError, match=message):
        engine.load(folder, device="cpu")


def test_extra_tensors_load_with_strict_false_and_are_noted(tmp_path):
    folder, _, _ = folder_for(tmp_path, "retnet", 43)
    rewrite(folder, lambda sd: sd.update({"model.layers.0.attn.extra.weight": torch.zeros(2)}))
    model = engine.load(folder, device="cpu", strict=False)
    assert "model.layers.0.attn.extra.weight" in model.info()["notes"]


@pytest.mark.parametrize("extra,message", [
    ({"attn": {"layers": [1], "num_heads": 2}}, "hybrid model with softmax-attention layers"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"feature_map": "elu"}, "feature_map 'elu' is not supported"),
])
def test_unsupported_configs_are_refused_in_words(tmp_path, extra, message):
    folder, _, cfg = folder_for(tmp_path, "gla", 44)
    (folder / "config.json").write_text(json.dumps({**cfg, **extra}))
    with pytest.raises(LoadError, match=message):
        engine.load(folder, device="cpu")


def test_a_bare_gla_state_dict_is_recognised_and_asks_for_the_head_count(tmp_path):
    cfg = fla_config("gla")
    sd = random_checkpoint(cfg, 45)
    torch.save({k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}, tmp_path / "gla.pt")
    with pytest.raises(LoadError, match="num_heads"):
        engine.load(tmp_path / "gla.pt", device="cpu")


def test_other_families_are_not_claimed_and_ours_are_not_theirs(tmp_path):
    lstm = torch.nn.LSTM(8, 16, 2).state_dict()
    assert not gla_loading.looks_like(lstm, [])
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MambaConfig(vocab_size=30, hidden_size=16, state_size=4, num_hidden_layers=2)
    hf = transformers.MambaForCausalLM(cfg)
    hf.save_pretrained(tmp_path / "mamba")
    configs = [("config.json", json.loads((tmp_path / "mamba" / "config.json").read_text()))]
    assert not gla_loading.looks_like(dict(hf.state_dict()), configs)
    assert isinstance(engine.load(tmp_path / "mamba", device="cpu"), mamba.MambaModel)
    for family in ("gla", "retnet"):
        c = fla_config(family)
        sd = random_checkpoint(c, 46)
        for other in (mamba, mingru, rwkv_loading):
            assert not other.looks_like(sd, [("config.json", c)]), (family, other.__name__)
