"""Loading fla DeltaNet checkpoints as users have them: folders in the layout
``DeltaNetForCausalLM.save_pretrained`` writes (``config.json`` with ``model_type`` "delta_net"
+ ``model.safetensors``), written here by ``transformers``' own ``save_pretrained`` from a
module tree that mirrors fla's names (fla's classes need triton), loaded with no config
editing; ``pytorch_model.bin`` folders; wrong or missing keys give a LoadError naming them;
other families' checkpoints are not claimed.  Logits vs the float64 reference within 5e-5."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import engine
from deltanet_reference import (float64_weights, fla_config, fla_gated_config, fla_state_dict, intermediate_size,
                                reference_deltanet, write_fla_folder)
from engine import LoadError
from engine.models.deltanet import DeltaNetModel
from engine.models.deltanet_loading import looks_like_deltanet

SMALL = {"hidden_size": 16, "num_heads": 2, "num_hidden_layers": 2, "vocab_size": 31, "intermediate_size": 24}


def reference_logits(cfg, sd, ids, conv_bias=False):
    return reference_deltanet(float64_weights(sd), cfg, ids, conv_bias=conv_bias)["logits"]


def folder(tmp_path, seed=0, name="m", conv_bias=False, gated=False, **cfg):
    config = fla_gated_config(**{**SMALL, "head_dim": 8, **cfg}) if gated else fla_config(**{**SMALL, **cfg})
    sd = fla_state_dict(config, seed, conv_bias=conv_bias)
    return write_fla_folder(tmp_path / name, config, sd), config, sd


# -- save_pretrained ---------------------------------------------------------------------------


def fla_like_model(config: dict, sd: dict):
    """A ``transformers`` PreTrainedModel holding ``sd`` under fla's module names, with a config
    class of fla's ``model_type``, for its ``save_pretrained``; no forward."""
    transformers = pytest.importorskip("transformers")
    special = ("architectures", "model_type", "dtype", "transformers_version", "pad_token_id", "bos_token_id",
               "eos_token_id", "tie_word_embeddings")

    class FlaConfig(transformers.PretrainedConfig):
        model_type = config["model_type"]

        def __init__(self, **kw):
            for key, value in {**config, **kw}.items():
                if key not in special:
                    setattr(self, key, value)
            super().__init__(**{k: kw[k] for k in special[4:] if k in kw})

    class FlaForCausalLM(transformers.PreTrainedModel):
        config_class = FlaConfig
        base_model_prefix = "model"

        def __init__(self, c):
            super().__init__(c)
            for key, tensor in sd.items():
                *path, leaf = key.split(".")
                module = self
                for part in path:
                    if not hasattr(module, part):
                        module.add_module(part, nn.Module())
                    module = getattr(module, part)
                module.register_parameter(leaf, nn.Parameter(tensor.clone()))

        def _init_weights(self, module):
            pass

    return FlaForCausalLM(FlaConfig(**{k: v for k, v in config.items() if k not in special[:4]}))


@pytest.mark.parametrize("gated", [False, True], ids=["delta_net", "gated_deltanet"])
def test_save_pretrained_folder_loads_unchanged(tmp_path, gated):
    config = fla_gated_config(**SMALL, head_dim=8, num_v_heads=4) if gated else fla_config(**SMALL)
    sd = fla_state_dict(config, seed=40)
    fla_like_model(config, sd).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == config["model_type"] and written["use_short_conv"] is True
    model = engine.load(tmp_path, device="cpu")
    assert isinstance(model, DeltaNetModel)
    info = model.info()
    assert info["architecture"] == ("gated_deltanet" if gated else "deltanet")
    assert info["layout"] == "fla " + ("GatedDeltaNetForCausalLM" if gated else "DeltaNetForCausalLM")
    assert info["format"] == "safetensors"
    ids = np.random.default_rng(0).integers(0, 31, 90)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], reference_logits(config, sd, ids),
                               atol=5e-5, rtol=5e-5)
    assert isinstance(engine.load(tmp_path / "config.json", device="cpu"), DeltaNetModel)


@pytest.mark.parametrize("cfg,conv_bias", [
    ({"use_gate": True, "tie_word_embeddings": True}, False),
    ({"intermediate_size": None, "hidden_ratio": 2, "expand_v": 2}, True),
    ({"use_short_conv": False, "use_beta": False, "qk_norm": "sum", "qk_activation": "elu"}, False),
], ids=["gate-tied", "default-mlp-convbias", "noconv-nobeta-sum"])
def test_fla_variants_load_and_match_the_reference(tmp_path, cfg, conv_bias):
    path, config, sd = folder(tmp_path, 41, conv_bias=conv_bias, **cfg)
    model = engine.load(path, device="cpu")
    assert model.config.use_gate == config["use_gate"] and model.config.conv_bias == conv_bias
    assert model.config.intermediate_size == intermediate_size(config)
    ids = np.random.default_rng(1).integers(0, 31, 70)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"],
                               reference_logits(config, sd, ids, conv_bias), atol=5e-5, rtol=5e-5)


def test_pytorch_model_bin_folder_loads(tmp_path):
    config = fla_config(**SMALL)
    sd = fla_state_dict(config, 42)
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(sd, tmp_path / "pytorch_model.bin")
    model = engine.load(tmp_path, device="cpu")
    ids = np.arange(40) % 31
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], reference_logits(config, sd, ids),
                               atol=5e-5, rtol=5e-5)


def test_weights_alone_are_recognised_and_their_config_inferred(tmp_path):
    from safetensors.torch import save_file

    config = fla_config(**{**SMALL, "use_gate": True, "num_heads": 4})
    sd = fla_state_dict(config, 43)
    save_file(sd, tmp_path / "w.safetensors")
    model = engine.load(tmp_path / "w.safetensors", device="cpu")
    assert model.config.num_heads == 4 and model.config.use_gate and model.config.conv_size == 4
    ids = np.arange(30) % 31
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], reference_logits(config, sd, ids),
                               atol=5e-5, rtol=5e-5)


# -- bad files ---------------------------------------------------------------------------------


def rewrite(path, edit_weights=None, edit_config=None):
    from safetensors.torch import load_file, save_file

    if edit_weights:
        sd = load_file(path / "model.safetensors")
        edit_weights(sd)
        save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    if edit_config:
        cfg = json.loads((path / "config.json").read_text())
        edit_config(cfg)
        (path / "config.json").write_text(json.dumps(cfg))


def test_missing_wrong_and_unexpected_keys_are_named(tmp_path):
    a, _, _ = folder(tmp_path, 44, "a")
    rewrite(a, lambda sd: sd.pop("model.layers.1.attn.k_proj.weight"))
    with pytest.raises(LoadError, match=r"missing model\.layers\.1\.attn\.k_proj\.weight"):
        engine.load(a, device="cpu")

    b, _, _ = folder(tmp_path, 44, "b")

    def bad_shape(sd):
        sd["model.layers.0.attn.b_proj.weight"] = sd["model.layers.0.attn.b_proj.weight"][:-1]

    rewrite(b, bad_shape)
    with pytest.raises(LoadError, match=r"model\.layers\.0\.attn\.b_proj\.weight is \[1, 16\], expected \[2, 16\]"):
        engine.load(b, device="cpu")

    c, _, _ = folder(tmp_path, 44, "c")

    def extra(sd):
        sd["model.layers.0.attn.mystery.weight"] = torch.zeros(3)

    rewrite(c, extra)
    with pytest.raises(LoadError, match=r"unexpected model\.layers\.0\.attn\.mystery\.weight"):
        engine.load(c, device="cpu")
    assert "mystery" in engine.load(c, device="cpu", strict=False).info()["notes"]


def test_config_that_disagrees_with_the_weights_names_the_keys(tmp_path):
    path, _, _ = folder(tmp_path, 45)
    rewrite(path, edit_config=lambda cfg: cfg.update(num_hidden_layers=3))
    with pytest.raises(LoadError, match=r"missing model\.layers\.2\.attn_norm\.weight"):
        engine.load(path, device="cpu")
    path2, _, _ = folder(tmp_path, 45, "m2")
    rewrite(path2, edit_config=lambda cfg: cfg.update(use_gate=True))
    with pytest.raises(LoadError, match=r"missing model\.layers\.0\.attn\.g_proj\.weight"):
        engine.load(path2, device="cpu")


@pytest.mark.parametrize("change,message", [
    ({"attn": {"layers": [1], "num_heads": 2}}, "hybrid"),
    ({"hidden_act": "gelu"}, "swish"),
    ({"qk_norm": "max"}, "qk_norm"),
])
def test_settings_we_do_not_have_are_refused_in_words(tmp_path, change, message):
    path, _, _ = folder(tmp_path, 46)
    rewrite(path, edit_config=lambda cfg: cfg.update(change))
    with pytest.raises(LoadError, match=message):
        engine.load(path, device="cpu")


# -- other families are not claimed ------------------------------------------------------------


def test_other_checkpoints_are_not_claimed(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=20, hidden_size=8, state_size=2,
                                                                num_hidden_layers=1))
    hf.save_pretrained(tmp_path / "mamba")
    cfg = json.loads((tmp_path / "mamba" / "config.json").read_text())
    assert not looks_like_deltanet(dict(hf.state_dict()), [("config.json", cfg)])
    assert engine.load(tmp_path / "mamba", device="cpu").architecture == "mamba"

    lstm = {"embedding.weight": torch.randn(20, 8), "rnn.weight_ih_l0": torch.randn(32, 8),
            "rnn.weight_hh_l0": torch.randn(32, 8), "rnn.bias_ih_l0": torch.randn(32),
            "rnn.bias_hh_l0": torch.randn(32), "fc.weight": torch.randn(20, 8), "fc.bias": torch.randn(20)}
    assert not looks_like_deltanet(lstm, [])
    torch.save(lstm, tmp_path / "lstm.pt")
    assert not isinstance(engine.load(tmp_path / "lstm.pt", device="cpu"), DeltaNetModel)

    # GLA and other fla families share q/k/v/o names: not this family
    sd = fla_state_dict(fla_config(**SMALL), 0)
    assert looks_like_deltanet(sd, [])
    assert not looks_like_deltanet({**sd, "model.layers.0.attn.A_log": torch.zeros(2)}, [])  # half a gated layer
    assert not looks_like_deltanet(sd, [("config.json", {"model_type": "gla"})])
    assert not looks_like_deltanet({**sd, "model.layers.0.attn.gk_proj.0.weight": torch.zeros(2, 16)}, [])


# -- traces ------------------------------------------------------------------------------------


def test_trace_with_state_and_attention_round_trips_through_hdf5(tmp_path):
    pytest.importorskip("h5py")
    path, _, _ = folder(tmp_path, 47)
    model = engine.load(path, device="cpu")
    model.attention_window = ((0, 10), (0, 10))
    trace = engine.run(model, np.arange(30) % 31)
    engine.save_trace(trace, tmp_path / "t.h5")
    back = engine.load_trace(tmp_path / "t.h5")
    np.testing.assert_array_equal(back["layers.0.state"], trace["layers.0.state"])
    np.testing.assert_array_equal(back["layers.0.attn"], trace["layers.0.attn"])
    assert back.specs["layers.0.state"].dims == ("token", "head", "key", "value")
    assert back.model_info["architecture"] == "deltanet"


def test_cli_info_lists_the_deltanet_probes(tmp_path, capsys):
    from engine.cli import main

    path, _, _ = folder(tmp_path, 48)
    main(["info", str(path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "deltanet" in out and "layers.0.state" in out and "[2, 8, 8]" in out


# -- gated DeltaNet ------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [{}, {"num_v_heads": 4, "expand_v": 1.0, "use_gate": False},
                                 {"allow_neg_eigval": True, "intermediate_size": None}],
                         ids=["default", "gva-nogate", "negeig-defaultmlp"])
def test_gated_variants_load_and_match_the_reference(tmp_path, cfg):
    path, config, sd = folder(tmp_path, 50, gated=True, **cfg)
    model = engine.load(path, device="cpu")
    assert model.architecture == "gated_deltanet" and model.config.gated
    assert model.config.num_v_heads == (config["num_v_heads"] or config["num_heads"])
    ids = np.random.default_rng(2).integers(0, 31, 80)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], reference_logits(config, sd, ids),
                               atol=5e-5, rtol=5e-5)


def test_gated_weights_alone_are_recognised_and_bad_keys_named(tmp_path):
    from safetensors.torch import save_file

    config = fla_gated_config(**SMALL, head_dim=8)
    sd = fla_state_dict(config, 51)
    save_file(sd, tmp_path / "w.safetensors")
    model = engine.load(tmp_path / "w.safetensors", device="cpu")
    assert model.config.gated and model.config.num_heads == 2 and model.config.head_v == 16
    ids = np.arange(30) % 31
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], reference_logits(config, sd, ids),
                               atol=5e-5, rtol=5e-5)
    path, _, _ = folder(tmp_path, 52, "g", gated=True)
    rewrite(path, lambda sd: sd.pop("model.layers.1.attn.dt_bias"))
    with pytest.raises(LoadError, match=r"missing model\.layers\.1\.attn\.dt_bias"):
        engine.load(path, device="cpu")


@pytest.mark.parametrize("gated", [False, True], ids=["delta_net", "gated_deltanet"])
def test_seqscope_save_model_round_trip(tmp_path, gated):
    from engine.loading import save_model

    path, _, _ = folder(tmp_path, 53, gated=gated, num_v_heads=4) if gated else folder(tmp_path, 53, use_gate=True)
    model = engine.load(path, device="cpu")
    save_model(model, tmp_path / "m.safetensors")
    back = engine.load(tmp_path / "m.safetensors", device="cpu")
    assert back.config == model.config and back.architecture == model.architecture
    ids = np.arange(50) % 31
    np.testing.assert_array_equal(engine.run(back, ids, probes="logits")["logits"],
                                  engine.run(model, ids, probes="logits")["logits"])
