"""Loading Mamba2 checkpoints as users have them: folders written by ``transformers``'
``Mamba2ForCausalLM.save_pretrained`` (no config editing; logits within 2e-5), bare state dicts;
wrong or missing keys give a LoadError naming them; other families' checkpoints (Mamba (1),
an LSTM) are not claimed by the Mamba2 loader.  Also: a trace in HDF5 and the CLI."""
import json

import numpy as np
import pytest
import torch

import engine
from engine import LoadError
from engine.models import mamba2_loading
from engine.models.mamba2 import Mamba2Model
from family_checks import assert_bad_keys_are_named

transformers = pytest.importorskip("transformers")
from test_mamba2_golden import hf_model  # noqa: E402


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids[None]), use_cache=False).logits[0].numpy()


@pytest.mark.parametrize("extra", [{}, {"tie_word_embeddings": True, "use_bias": True, "n_groups": 2},
                                   {"use_conv_bias": False, "time_step_limit": (0.01, 0.3), "chunk_size": 3,
                                    "num_heads": 4, "head_dim": 8, "n_groups": 4}],
                         ids=["default", "tied-bias-G2", "noconvbias-limit-H4"])
def test_save_pretrained_folder_loads_unchanged(tmp_path, extra):
    extra = dict(extra)
    kw = {k: extra.pop(k) for k in ("num_heads", "head_dim", "n_groups") if k in extra}
    hf = hf_model(40, vocab=41, d=16, N=4, layers=2, heads=kw.get("num_heads", 8), head_dim=kw.get("head_dim", 4),
                  groups=kw.get("n_groups", 1), **extra)
    hf.save_pretrained(tmp_path)
    model = engine.load(tmp_path, device="cpu")
    assert isinstance(model, Mamba2Model)
    info = model.info()
    assert info["architecture"] == "mamba2" and info["layout"] == "transformers Mamba2ForCausalLM"
    assert info["format"] == "safetensors" and "chunk_size" in info["notes"]
    assert model.config.n_groups == kw.get("n_groups", 1)
    ids = np.random.default_rng(0).integers(0, 41, 80)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=2e-5, rtol=2e-5)
    # the config.json path opens the same model
    assert isinstance(engine.load(tmp_path / "config.json", device="cpu"), Mamba2Model)


def test_a_bare_state_dict_without_config_is_inferred_from_the_weights(tmp_path):
    hf = hf_model(42, vocab=30, d=16, N=4, layers=3, use_conv_bias=False)
    p = tmp_path / "mamba2.pt"
    torch.save({"model": hf.state_dict(), "step": 100}, p)
    model = engine.load(p, device="cpu")
    assert isinstance(model, Mamba2Model) and model.config.n_layer == 3 and not model.config.conv_bias
    assert model.config.n_heads == 8 and model.config.d_state == 4 and "n_groups is not stated" in model.info()["notes"]
    ids = np.arange(25) % 30
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=2e-5, rtol=2e-5)


def test_missing_wrong_and_unexpected_keys_are_named(tmp_path):
    assert_bad_keys_are_named(tmp_path, hf_model(43, vocab=20, d=8, N=2, layers=2, heads=4, head_dim=4, groups=2),
                              missing="backbone.layers.1.mixer.D", misshapen="backbone.layers.0.mixer.conv1d.weight",
                              cut=lambda t: t[:-1],
                              shape_message=r"backbone\.layers\.0\.mixer\.conv1d\.weight is \[23, 1, 4\], expected "
                                            r"\[24, 1, 4\]",
                              unexpected="backbone.layers.0.mixer.mystery.weight")


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"num_hidden_layers": 3}, r"missing backbone\.layers\.2\.norm\.weight"),
    ({"n_groups": 2}, r"conv1d\.weight is \[20, 1, 4\], expected \[24, 1, 4\]"),
    ({"hidden_act": "gelu"}, "silu only"),
    ({"num_heads": 3}, "expand \\* hidden_size = 16 but num_heads \\* head_dim = 12"),
    ({"time_step_limit": "fast"}, "time_step_limit"),
])
def test_config_that_disagrees_with_the_weights_is_refused_in_words(tmp_path, changes, message):
    hf = hf_model(44, vocab=20, d=8, N=2, layers=2, heads=4, head_dim=4)
    hf.save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(LoadError, match=message):
        engine.load(tmp_path, device="cpu")


def test_other_families_are_not_claimed(tmp_path):
    from test_mamba_golden import hf_model as mamba1_model

    mamba1 = mamba1_model(45, vocab=20, d=8, N=2, layers=1)
    mamba1.save_pretrained(tmp_path / "m1")
    assert not mamba2_loading.looks_like(dict(mamba1.state_dict()), [("config.json", mamba1.config.to_dict())])
    assert not mamba2_loading.looks_like(dict(mamba1.state_dict()), [("config.json", {"model_type": "mamba2"})])
    assert type(engine.load(tmp_path / "m1", device="cpu")).__name__ == "MambaModel"
    lstm = torch.nn.LSTM(8, 16, 2)
    assert not mamba2_loading.looks_like({f"rnn.{k}": v for k, v in lstm.state_dict().items()}, [])
    # a hybrid with Mamba2 mixers, by its config, is left to the Mamba loader's message
    hf = hf_model(46, vocab=20, d=8, N=2, layers=1, heads=4, head_dim=4)
    assert mamba2_loading.looks_like(dict(hf.state_dict()), [])
    assert not mamba2_loading.looks_like(dict(hf.state_dict()), [("config.json", {"model_type": "bamba"})])


def test_tokenizer_json_beside_the_weights_is_used(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = hf_model(47, vocab=40, d=8, N=2, layers=1, heads=4, head_dim=4)
    hf.save_pretrained(tmp_path)
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz .,")}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="."))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tok.save(str(tmp_path / "tokenizer.json"))
    model = engine.load(tmp_path, device="cpu")
    trace = engine.run(model, "hello world", probes="logits")
    assert trace.n_tokens > 0 and trace.token_text is not None


def test_trace_with_state_and_attention_round_trips_through_hdf5(tmp_path):
    pytest.importorskip("h5py")
    hf = hf_model(48, vocab=20, d=8, N=2, layers=1, heads=4, head_dim=4)
    hf.save_pretrained(tmp_path / "m")
    model = engine.load(tmp_path / "m", device="cpu")
    model.attention_window = ((0, 10), (0, 10))
    trace = engine.run(model, np.arange(30) % 20)
    engine.save_trace(trace, tmp_path / "t.h5")
    back = engine.load_trace(tmp_path / "t.h5")
    np.testing.assert_array_equal(back["layers.0.state"], trace["layers.0.state"])
    np.testing.assert_array_equal(back["layers.0.attn"], trace["layers.0.attn"])
    assert back.specs["layers.0.state"].dims == ("token", "unit", "state")
    assert back.model_info["architecture"] == "mamba2"


def test_cli_info_lists_the_mamba2_probes(tmp_path, capsys):
    from engine.cli import main

    hf = hf_model(49, vocab=20, d=8, N=2, layers=1, heads=4, head_dim=4)
    hf.save_pretrained(tmp_path)
    main(["info", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "mamba2" in out and "layers.0.state" in out and "[16, 2]" in out


def mamba_ssm_folder(path, hf, vocab_size, pad=8, **cfg):
    """What mamba_ssm's MambaLMHeadModel.save_pretrained writes for a Mamba2 model: its own
    config keys, the embedding named ``embedding``, lm_head saved even when tied, vocabulary padded."""
    path.mkdir(parents=True, exist_ok=True)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in hf.state_dict().items()}
    torch.save(sd, path / "pytorch_model.bin")
    c = hf.config
    ssm_cfg = {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
               "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": 64, **cfg.pop("ssm_cfg", {})}
    config = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab_size,
              "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": pad, "tie_embeddings": True, **cfg}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_mamba_ssm_layout_loads(tmp_path):
    hf = hf_model(50, vocab=48, d=16, N=4, layers=2, heads=8, head_dim=4, groups=2, tie_word_embeddings=True)
    folder = mamba_ssm_folder(tmp_path / "m", hf, vocab_size=45)  # 48 rows = 45 padded to a multiple of 8
    model = engine.load(folder, device="cpu")
    assert isinstance(model, Mamba2Model) and model.info()["layout"] == "mamba_ssm"
    assert model.vocab_size == 48 and model.config.n_groups == 2 and "padded to 48" in model.info()["notes"]
    ids = np.random.default_rng(1).integers(0, 45, 70)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cfg,message", [
    ({"d_intermediate": 64}, "MLP blocks"),
    ({"attn_layer_idx": [1]}, "hybrid"),
    ({"ssm_cfg": {"norm_before_gate": True}}, "normalises before the gate"),
    ({"ssm_cfg": {"d_ssm": 8}}, "gated MLP inside the mixer"),
])
def test_mamba_ssm_variants_we_do_not_have_are_refused(tmp_path, cfg, message):
    hf = hf_model(51, vocab=24, d=8, N=2, layers=2, heads=4, head_dim=4, tie_word_embeddings=True)
    folder = mamba_ssm_folder(tmp_path / "m", hf, vocab_size=24, **cfg)
    with pytest.raises(LoadError, match=message):
        engine.load(folder, device="cpu")
