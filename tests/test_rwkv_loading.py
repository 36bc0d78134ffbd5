"""Loading RWKV-4 checkpoints as users have them: folders written by ``transformers``'
``RwkvForCausalLM.save_pretrained`` (no config editing) and BlinkDL's ``.pth`` names (what
``transformers``' conversion script reads); wrong or missing keys give a LoadError naming them.
Also: RWKV traces in HDF5 and the CLI."""
import json

import numpy as np
import pytest
import torch

import engine
from engine import LoadError
from engine.models.rwkv import RwkvModel
from family_checks import assert_bad_keys_are_named, write_safetensors_folder

transformers = pytest.importorskip("transformers")
from test_rwkv_golden import hf_model  # noqa: E402


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids[None]), use_cache=False).logits[0].numpy()


@pytest.mark.parametrize("extra", [{}, {"tie_word_embeddings": True},
                                   {"att": 12, "ffn": 40, "layer_norm_epsilon": 1e-3}],
                         ids=["default", "tied", "sizes-eps"])
def test_save_pretrained_folder_loads_unchanged(tmp_path, extra):
    extra = dict(extra)
    hf = hf_model(40, vocab=41, d=16, layers=2, att=extra.pop("att", None), ffn=extra.pop("ffn", None), **extra)
    hf.save_pretrained(tmp_path)
    model = engine.load(tmp_path, device="cpu")
    assert isinstance(model, RwkvModel)
    info = model.info()
    assert info["architecture"] == "rwkv" and info["layout"] == "transformers RwkvForCausalLM"
    assert info["format"] == "safetensors" and "notes" not in info  # rescale_every=0: nothing to note
    assert model.config.tie_embeddings == bool(extra.get("tie_word_embeddings", False))
    assert model.config.norm_eps == extra.get("layer_norm_epsilon", 1e-5)
    ids = np.random.default_rng(0).integers(0, 41, 60)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=2e-5, rtol=2e-5)
    assert isinstance(engine.load(tmp_path / "config.json", device="cpu"), RwkvModel)


def test_the_default_rescale_every_is_noted_and_the_weights_load_unscaled(tmp_path):
    hf = hf_model(41, vocab=30, d=16, layers=2, rescale_every=6)  # transformers' default setting
    hf.save_pretrained(tmp_path)  # saved before any eval forward: unscaled weights
    model = engine.load(tmp_path, device="cpu")
    assert "rescale_every=6" in model.info()["notes"]
    ids = np.arange(40) % 30
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=1e-4, rtol=1e-4)


def blinkdl_state_dict(hf):
    """RwkvForCausalLM names → BlinkDL RWKV-4 names (the inverse of transformers' conversion)."""
    out = {}
    for k, v in hf.state_dict().items():
        k = k.removeprefix("rwkv.").replace("embeddings.", "emb.").replace("blocks.0.pre_ln", "blocks.0.ln0")
        k = k.replace(".attention.", ".att.").replace(".feed_forward.", ".ffn.")
        for long, short in (("key", "k"), ("value", "v"), ("receptance", "r")):
            k = k.replace(f"time_mix_{long}", f"time_mix_{short}")
        out[k] = v.clone()
    return out


def test_blinkdl_pth_loads_without_a_config(tmp_path):
    hf = hf_model(42, vocab=30, d=16, layers=3, att=8, ffn=24)
    sd = blinkdl_state_dict(hf)
    assert "blocks.0.ln0.weight" in sd and "blocks.2.att.time_mix_k" in sd and "emb.weight" in sd
    sd = {k: v.to(torch.bfloat16) if "time_" not in k else v for k, v in sd.items()}  # as released, mostly bf16
    p = tmp_path / "RWKV-4-tiny.pth"
    torch.save(sd, p)
    model = engine.load(p, device="cpu")
    assert model.info()["layout"] == "BlinkDL RWKV-4" and model.config.n_layer == 3
    assert (model.config.d_att, model.config.d_ffn) == (8, 24) and not model.config.tie_embeddings
    ref = hf_model(42, vocab=30, d=16, layers=3, att=8, ffn=24)
    with torch.no_grad():  # transformers with the same bf16-rounded weights
        for k, v in ref.state_dict().items():
            if "time_" not in k:
                v.copy_(v.to(torch.bfloat16).float())
    ids = np.arange(50) % 30
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(ref, ids),
                               atol=5e-5, rtol=5e-5)


def test_missing_wrong_and_unexpected_keys_are_named(tmp_path):
    hf = hf_model(43, vocab=20, d=8, layers=2)
    assert_bad_keys_are_named(tmp_path, hf, missing="rwkv.blocks.1.attention.time_decay",
                              misshapen="rwkv.blocks.0.feed_forward.key.weight", cut=lambda t: t[:, :-1],
                              shape_message=r"rwkv\.blocks\.0\.feed_forward\.key\.weight is \[32, 7\], "
                                            r"expected \[32, 8\]",
                              unexpected="rwkv.blocks.0.attention.mystery")

    write_safetensors_folder(tmp_path / "d", hf, lambda sd: sd.pop("head.weight"))
    with pytest.raises(LoadError, match=r"missing head\.weight \(the config does not tie"):
        engine.load(tmp_path / "d", device="cpu")


def test_config_that_disagrees_with_the_weights_names_the_keys(tmp_path):
    hf = hf_model(44, vocab=20, d=8, layers=2)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"missing rwkv\.blocks\.2\.ln1\.weight"):
        engine.load(tmp_path, device="cpu")


@pytest.mark.parametrize("model_type,message", [("rwkv5", "RWKV-5"), ("rwkv6", "RWKV-6"), ("rwkv7", "RWKV-7")])
def test_later_rwkv_versions_are_refused_in_words(tmp_path, model_type, message):
    hf = hf_model(45, vocab=20, d=8, layers=1)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = model_type
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=f"{message}.*does not read") as err:
        engine.load(tmp_path, device="cpu")
    if model_type == "rwkv7":  # RWKV-7 is read, from BlinkDL .pth files: the message says so
        assert "load the BlinkDL .pth of this model instead" in str(err.value)
        assert "not supported" not in str(err.value)
    else:
        assert f"{message} is not supported yet" in str(err.value)


def test_a_later_version_pth_is_refused_in_words(tmp_path):
    sd = {"emb.weight": torch.zeros(10, 8), "blocks.0.att.time_faaaa": torch.zeros(2, 4),
          "blocks.0.att.time_decay": torch.zeros(8)}
    torch.save(sd, tmp_path / "rwkv5.pth")
    with pytest.raises(LoadError, match="RWKV-5 or RWKV-6.*reads RWKV-4 and RWKV-7"):
        engine.load(tmp_path / "rwkv5.pth", device="cpu")


def test_tokenizer_json_beside_the_weights_is_used(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = hf_model(46, vocab=40, d=8, layers=1)
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
    hf = hf_model(47, vocab=20, d=8, layers=1)
    hf.save_pretrained(tmp_path / "m")
    model = engine.load(tmp_path / "m", device="cpu")
    model.attention_window = ((0, 10), (0, 10))
    trace = engine.run(model, np.arange(30) % 20)
    engine.save_trace(trace, tmp_path / "t.h5")
    back = engine.load_trace(tmp_path / "t.h5")
    np.testing.assert_array_equal(back["layers.0.state"], trace["layers.0.state"])
    np.testing.assert_array_equal(back["layers.0.attn"], trace["layers.0.attn"])
    assert back.specs["layers.0.state"].dims == ("token", "unit", "state")
    assert back.model_info["architecture"] == "rwkv"


def test_cli_info_lists_the_rwkv_probes(tmp_path, capsys):
    from engine.cli import main

    hf = hf_model(48, vocab=20, d=8, layers=1)
    hf.save_pretrained(tmp_path)
    main(["info", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "rwkv" in out and "layers.0.state" in out and "[8, 3]" in out and "layers.0.wkv" in out
