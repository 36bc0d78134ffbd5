"""Loading RecurrentGemma checkpoints as users have them: folders written by ``transformers``'
``RecurrentGemmaForCausalLM.save_pretrained`` (and a bare ``RecurrentGemmaModel``) open with
``engine.load`` and no config editing, with transformers' logits; wrong, missing or unexpected
keys give a LoadError naming them; other families' files are not claimed."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from engine import LoadError
from engine.models import recurrent_gemma_loading
from engine.models.recurrent_gemma import RecurrentGemmaModel

transformers = pytest.importorskip("transformers")
from test_recurrent_gemma_golden import hf_model  # noqa: E402


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids[None]), use_cache=False).logits[0].numpy()


@pytest.mark.parametrize("case", ["mqa-w8", "kv2-w64"])
def test_save_pretrained_folder_loads_unchanged(tmp_path, case):
    hf = hf_model(case, 7)
    hf.save_pretrained(tmp_path)
    model = engine.load(tmp_path, device="cpu")
    assert isinstance(model, RecurrentGemmaModel)
    info = model.info()
    assert info["architecture"] == "recurrent_gemma" and info["layout"] == "transformers RecurrentGemmaForCausalLM"
    assert model.config == recurrent_gemma_loading.from_transformers(hf).config
    ids = np.random.default_rng(0).integers(0, 37, 100)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=2e-5, rtol=2e-5)
    assert isinstance(engine.load(tmp_path / "config.json", device="cpu"), RecurrentGemmaModel)


def test_untied_head_and_a_bare_model_folder(tmp_path):
    hf = hf_model("mqa-w8", 8)
    with torch.no_grad():
        hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight))
    hf.config.tie_word_embeddings = False
    hf.save_pretrained(tmp_path / "untied")
    model = engine.load(tmp_path / "untied", device="cpu")
    assert not model.config.tie_word_embeddings
    ids = np.random.default_rng(1).integers(0, 37, 40)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=2e-5, rtol=2e-5)

    hf = hf_model("mqa-w8", 9)
    hf.model.save_pretrained(tmp_path / "bare")  # keys without "model." and no lm_head: tied
    model = engine.load(tmp_path / "bare", device="cpu")
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=2e-5, rtol=2e-5)


def test_weights_alone_load_with_the_window_noted(tmp_path):
    hf = hf_model("mqa-w8", 10, rope_theta=10000.0)  # the defaults, which weights alone cannot state
    save_file({k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}, tmp_path / "w.safetensors")
    model = engine.load(tmp_path / "w.safetensors", device="cpu")
    cfg = model.config
    assert [cfg.kind(k) for k in range(3)] == ["recurrent", "recurrent", "attention"]
    assert (cfg.num_key_value_heads, cfg.lru_width, cfg.conv1d_width) == (1, 48, 4)
    assert cfg.attention_window_size == 2048 and "attention_window_size" in model.info()["notes"]
    ids = np.random.default_rng(2).integers(0, 37, 8)  # within hf's window of 8: the same logits
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=2e-5, rtol=2e-5)


def _folder_with(tmp_path, hf, change):
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    change(sd)
    save_file(sd, tmp_path / "model.safetensors")
    return tmp_path


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("model.layers.1.temporal_block.rg_lru.input_gate_bias"),
     r"missing model\.layers\.1\.temporal_block\.rg_lru\.input_gate_bias"),
    (lambda sd: sd.__setitem__("model.layers.0.temporal_block.conv_1d.weight", torch.zeros(48, 1, 3)),
     r"model\.layers\.0\.temporal_block\.conv_1d\.weight is \[48, 1, 3\], expected \[48, 1, 4\]"),
    (lambda sd: sd.pop("model.layers.2.temporal_block.o_proj.bias"), r"missing model\.layers\.2\.temporal_block\.o_proj\.bias"),
    (lambda sd: sd.__setitem__("model.layers.2.extra.weight", torch.zeros(3)), r"unexpected model\.layers\.2\.extra\.weight"),
], ids=["missing", "wrong-shape", "missing-attention", "unexpected"])
def test_bad_keys_name_themselves(tmp_path, change, words):
    folder = _folder_with(tmp_path, hf_model("mqa-w8", 11), change)
    with pytest.raises(LoadError, match=words):
        engine.load(folder, device="cpu")


def test_strict_false_notes_unexpected_tensors(tmp_path):
    folder = _folder_with(tmp_path, hf_model("mqa-w8", 12), lambda sd: sd.__setitem__("model.extra", torch.zeros(2)))
    model = engine.load(folder, device="cpu", strict=False)
    assert "model.extra" in model.info()["notes"]


def test_a_config_that_says_recurrent_gemma_over_other_weights_is_refused(tmp_path):
    hf = hf_model("mqa-w8", 13)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["lru_width"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"rg_lru\.recurrent_param is \[48\], expected \[64\]"):
        engine.load(tmp_path, device="cpu")


def test_other_families_are_not_claimed(tmp_path):
    mc = transformers.MambaConfig(vocab_size=20, hidden_size=16, state_size=4, num_hidden_layers=2)
    transformers.MambaForCausalLM(mc).save_pretrained(tmp_path / "mamba")
    sd = load_file(tmp_path / "mamba" / "model.safetensors")
    cfg = [("config.json", json.loads((tmp_path / "mamba" / "config.json").read_text()))]
    assert not recurrent_gemma_loading.looks_like(sd, cfg)
    assert engine.load(tmp_path / "mamba", device="cpu").architecture == "mamba"
    lstm = torch.nn.LSTM(8, 16, num_layers=2)
    assert not recurrent_gemma_loading.looks_like(dict(lstm.state_dict()), [])
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    assert engine.load(tmp_path / "lstm.pt", device="cpu").architecture != "recurrent_gemma"
