"""Loading Mamba checkpoints as users have them: folders written by ``transformers``'
``MambaForCausalLM.save_pretrained`` (no config editing) and the original ``mamba_ssm``
layout (``config.json`` with ``d_model``/``n_layer``/``ssm_cfg`` + ``pytorch_model.bin``);
wrong or missing keys give a LoadError naming them.  Also: Mamba traces in HDF5 and the CLI."""
import json

import numpy as np
import pytest
import torch

import engine
from engine import LoadError
from engine.models.mamba import MambaModel
from family_checks import assert_bad_keys_are_named

transformers = pytest.importorskip("transformers")
from test_mamba_golden import hf_model  # noqa: E402


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids[None]), use_cache=False).logits[0].numpy()


@pytest.mark.parametrize("extra", [{}, {"tie_word_embeddings": False, "use_bias": True},
                                   {"use_conv_bias": False, "time_step_rank": 3}], ids=["tied", "untied-bias", "noconvbias"])
def test_save_pretrained_folder_loads_unchanged(tmp_path, extra):
    hf = hf_model(40, vocab=41, d=16, N=4, layers=2, **extra)
    hf.save_pretrained(tmp_path)
    model = engine.load(tmp_path, device="cpu")
    assert isinstance(model, MambaModel)
    info = model.info()
    assert info["architecture"] == "mamba" and info["layout"] == "transformers MambaForCausalLM"
    assert info["format"] == "safetensors"
    ids = np.random.default_rng(0).integers(0, 41, 60)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=2e-5, rtol=2e-5)
    # the config.json path opens the same model
    assert isinstance(engine.load(tmp_path / "config.json", device="cpu"), MambaModel)


def mamba_ssm_folder(path, hf, vocab_size, pad=8, **cfg):
    """What mamba_ssm's MambaLMHeadModel.save_pretrained writes: its own config keys, the
    embedding named ``embedding``, lm_head saved even when tied, vocabulary padded."""
    path.mkdir(parents=True, exist_ok=True)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in hf.state_dict().items()}
    torch.save(sd, path / "pytorch_model.bin")
    c = hf.config
    config = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab_size,
              "ssm_cfg": {"d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand}, "attn_layer_idx": [],
              "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": pad, "tie_embeddings": True, **cfg}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_mamba_ssm_layout_loads(tmp_path):
    hf = hf_model(41, vocab=48, d=16, N=4, layers=2)  # 48 rows = 45 padded to a multiple of 8
    folder = mamba_ssm_folder(tmp_path / "m", hf, vocab_size=45)
    model = engine.load(folder, device="cpu")
    assert model.info()["layout"] == "mamba_ssm" and model.vocab_size == 48
    assert "padded to 48" in model.info()["notes"]
    ids = np.random.default_rng(1).integers(0, 45, 50)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=2e-5, rtol=2e-5)


def test_a_bare_state_dict_without_config_is_inferred_from_the_weights(tmp_path):
    hf = hf_model(42, vocab=30, d=16, N=4, layers=3, use_conv_bias=False)
    p = tmp_path / "mamba.pt"
    torch.save({"model": hf.state_dict(), "step": 100}, p)
    model = engine.load(p, device="cpu")
    assert model.config.n_layer == 3 and not model.config.conv_bias
    ids = np.arange(25) % 30
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=2e-5, rtol=2e-5)


def test_missing_wrong_and_unexpected_keys_are_named(tmp_path):
    assert_bad_keys_are_named(tmp_path, hf_model(43, vocab=20, d=8, N=2, layers=2),
                              missing="backbone.layers.1.mixer.D", misshapen="backbone.layers.0.mixer.x_proj.weight",
                              cut=lambda t: t[:-1],
                              shape_message=r"backbone\.layers\.0\.mixer\.x_proj\.weight is \[4, 16\], "
                                            r"expected \[5, 16\]",
                              unexpected="backbone.layers.0.mixer.mystery.weight")


def test_config_that_disagrees_with_the_weights_names_the_keys(tmp_path):
    hf = hf_model(44, vocab=20, d=8, N=2, layers=2)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"missing backbone\.layers\.2\.norm\.weight"):
        engine.load(tmp_path, device="cpu")


@pytest.mark.parametrize("config,message", [
    ({"model_type": "mamba2"}, r"mamba2.*Mamba \(1\)'s layout"),
    ({"model_type": "falcon_mamba"}, "FalconMamba.*not supported yet"),
    ({"model_type": "mamba", "hidden_act": "gelu"}, "silu only"),
])
def test_other_families_and_settings_are_refused_in_words(tmp_path, config, message):
    hf = hf_model(45, vocab=20, d=8, N=2, layers=1)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(config)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=message):
        engine.load(tmp_path, device="cpu")


@pytest.mark.parametrize("cfg,message", [
    ({"d_intermediate": 64}, "MLP blocks"),
    ({"attn_layer_idx": [1]}, "hybrid"),
    ({"ssm_cfg": {"layer": "Mamba2"}}, "Mamba2"),
])
def test_mamba_ssm_variants_we_do_not_have_are_refused(tmp_path, cfg, message):
    hf = hf_model(46, vocab=24, d=8, N=2, layers=2)
    folder = mamba_ssm_folder(tmp_path / "m", hf, vocab_size=24, **cfg)
    with pytest.raises(LoadError, match=message):
        engine.load(folder, device="cpu")


def test_tokenizer_json_beside_the_weights_is_used(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = hf_model(47, vocab=40, d=8, N=2, layers=1)
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
    hf = hf_model(48, vocab=20, d=8, N=2, layers=1)
    hf.save_pretrained(tmp_path / "m")
    model = engine.load(tmp_path / "m", device="cpu")
    model.attention_window = ((0, 10), (0, 10))
    trace = engine.run(model, np.arange(30) % 20)
    engine.save_trace(trace, tmp_path / "t.h5")
    back = engine.load_trace(tmp_path / "t.h5")
    np.testing.assert_array_equal(back["layers.0.state"], trace["layers.0.state"])
    np.testing.assert_array_equal(back["layers.0.attn"], trace["layers.0.attn"])
    assert back.specs["layers.0.state"].dims == ("token", "unit", "state")
    assert back.model_info["architecture"] == "mamba"


def test_cli_info_lists_the_mamba_probes(tmp_path, capsys):
    from engine.cli import main

    hf = hf_model(49, vocab=20, d=8, N=2, layers=1)
    hf.save_pretrained(tmp_path)
    main(["info", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "mamba" in out and "layers.0.state" in out and "[16, 2]" in out
