"""Loading xLSTM checkpoints as users have them: folders written by ``transformers``'
``xLSTMForCausalLM.save_pretrained`` (no config editing; ``weight_mode`` "single" and "fused"),
a bare state dict; wrong or missing keys give a LoadError naming them; other families'
checkpoints are not claimed.  Also: xLSTM traces in HDF5 and the CLI."""
import json

import numpy as np
import pytest
import torch

import engine
from engine import LoadError
from engine.models import xlstm
from engine.models.xlstm import XLSTMModel
from family_checks import assert_bad_keys_are_named

transformers = pytest.importorskip("transformers")
from test_xlstm_golden import hf_model  # noqa: E402


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids[None]), use_cache=False).logits[0].numpy()


@pytest.mark.parametrize("extra", [{}, {"use_bias": True, "qk_dim_factor": 0.25, "v_dim_factor": 1.5},
                                   {"gate_soft_cap": 6.0, "norm_eps": 1e-4, "output_logit_soft_cap": 3.0}],
                         ids=["default", "bias-dims", "caps-eps"])
def test_save_pretrained_folder_loads_unchanged(tmp_path, extra):
    hf = hf_model(40, vocab=41, d=32, layers=2, heads=4, **extra)
    hf.save_pretrained(tmp_path)
    model = engine.load(tmp_path, device="cpu")
    assert isinstance(model, XLSTMModel)
    info = model.info()
    assert info["architecture"] == "xlstm" and info["layout"] == "transformers xLSTMForCausalLM"
    assert info["format"] == "safetensors" and "notes" not in info
    assert model.config.use_bias == extra.get("use_bias", False)
    assert model.config.gate_soft_cap == extra.get("gate_soft_cap", 15.0)
    assert model.config.norm_eps == extra.get("norm_eps", 1e-6)
    ids = np.random.default_rng(0).integers(0, 41, 100)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=5e-5, rtol=5e-5)
    assert isinstance(engine.load(tmp_path / "config.json", device="cpu"), XLSTMModel)


def test_a_fused_weight_mode_folder_is_split_into_the_single_names(tmp_path):
    """weight_mode="fused" (qkv_opreact, ifgate_preact, proj_up_gate_z): written by hand from a
    single-mode model, since transformers cannot initialise a fused one on its own."""
    from safetensors.torch import save_file

    hf = hf_model(41, vocab=30, d=32, layers=2, heads=4, use_bias=True)
    sd = hf.state_dict()
    singles = {"q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact", "proj_up_gate", "proj_up"}
    fused = {k: v.clone() for k, v in sd.items() if k.split(".")[-2] not in singles}
    for i in range(2):
        m, f = f"backbone.blocks.{i}.mlstm_layer.", f"backbone.blocks.{i}.ffn."
        for kind in ("weight", "bias"):
            fused[f"{m}qkv_opreact.{kind}"] = torch.cat([sd[f"{m}{n}.{kind}"] for n in ("q", "k", "v", "ogate_preact")])
            fused[f"{m}ifgate_preact.{kind}"] = torch.cat([sd[f"{m}igate_preact.{kind}"], sd[f"{m}fgate_preact.{kind}"]])
            fused[f"{f}proj_up_gate_z.{kind}"] = torch.cat([sd[f"{f}proj_up_gate.{kind}"], sd[f"{f}proj_up.{kind}"]])
    tmp_path.mkdir(exist_ok=True)
    save_file(fused, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({**hf.config.to_dict(), "weight_mode": "fused"}))
    assert not any(".q.weight" in k for k in fused)
    model = engine.load(tmp_path, device="cpu")
    ids = np.arange(70) % 30
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=5e-5, rtol=5e-5)


def test_a_bare_state_dict_without_config_is_inferred_from_the_weights(tmp_path):
    hf = hf_model(42, vocab=30, d=32, layers=3, heads=2)
    p = tmp_path / "xlstm.pt"
    torch.save({"model": hf.state_dict(), "step": 100}, p)
    model = engine.load(p, device="cpu")
    c = model.config
    assert (c.n_layer, c.num_heads, c.qk_dim, c.v_dim, c.ffn_dim) == (3, 2, 16, 32, 64)
    ids = np.arange(25) % 30
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids), atol=5e-5, rtol=5e-5)
    # other prefixes: none (the backbone's own names beside lm_head), or DataParallel's module.
    for name, sd in [("bare", {k.removeprefix("backbone."): v for k, v in hf.state_dict().items()}),
                     ("module", {"module." + k: v for k, v in hf.state_dict().items()})]:
        torch.save(sd, tmp_path / f"{name}.pt")
        other = engine.load(tmp_path / f"{name}.pt", device="cpu")
        assert not other.config.tie_embeddings, name
        np.testing.assert_array_equal(engine.run(other, ids, probes="logits")["logits"],
                                      engine.run(model, ids, probes="logits")["logits"])


def test_a_head_saved_without_lm_head_uses_the_embedding():
    hf = hf_model(43, vocab=20, d=16, layers=1, heads=2)
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    model = xlstm.load(sd, [], name="sd", fmt="in-memory")
    assert model.config.tie_embeddings and model.head is model.embed


def test_missing_wrong_and_unexpected_keys_are_named(tmp_path):
    assert_bad_keys_are_named(tmp_path, hf_model(44, vocab=20, d=16, layers=2, heads=2),
                              missing="backbone.blocks.1.mlstm_layer.fgate_preact.bias",
                              misshapen="backbone.blocks.0.mlstm_layer.k.weight", cut=lambda t: t[:-1],
                              shape_message=r"backbone\.blocks\.0\.mlstm_layer\.k\.weight is \[7, 16\], "
                                            r"expected \[8, 16\]",
                              unexpected="backbone.blocks.0.mlstm_layer.mystery.weight")


def test_config_that_disagrees_with_the_weights_names_the_keys(tmp_path):
    hf = hf_model(45, vocab=20, d=16, layers=2, heads=2)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = cfg["num_blocks"] = 3  # the count transformers builds: num_blocks
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"missing backbone\.blocks\.2\.norm_mlstm\.weight"):
        engine.load(tmp_path, device="cpu")
    cfg["num_hidden_layers"], cfg["num_blocks"], cfg["num_heads"] = 2, 2, 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"not a multiple of num_heads=3"):
        engine.load(tmp_path, device="cpu")


def test_other_families_are_not_claimed(tmp_path):
    """Mamba, RWKV and minGRU state dicts and an nn.LSTM file: looks_like says no, and
    engine.load builds their own models."""
    mamba = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=20, hidden_size=8, state_size=2,
                                                                    num_hidden_layers=1))
    from test_rwkv_golden import hf_model as rwkv_model

    rwkv = rwkv_model(1, vocab=20, d=8, layers=1)
    lstm = {"embed.weight": torch.randn(20, 8), **{f"rnn.{k}": v for k, v in torch.nn.LSTM(8, 16).state_dict().items()},
            "head.weight": torch.randn(20, 16), "head.bias": torch.randn(20)}
    for name, sd, config in [("mamba", mamba.state_dict(), mamba.config.to_dict()),
                             ("rwkv", rwkv.state_dict(), rwkv.config.to_dict()), ("lstm", lstm, {})]:
        assert not xlstm.looks_like(dict(sd), [("config.json", config)]), name
    mamba.save_pretrained(tmp_path / "mamba")
    assert engine.load(tmp_path / "mamba", device="cpu").architecture == "mamba"
    torch.save(lstm, tmp_path / "lstm.pt")
    assert engine.load(tmp_path / "lstm.pt", device="cpu").architecture == "lstm"
    # and an xLSTM folder is not taken by the families tried before it
    hf = hf_model(46, vocab=20, d=16, layers=1, heads=2)
    hf.save_pretrained(tmp_path / "x")
    assert engine.load(tmp_path / "x", device="cpu").architecture == "xlstm"


def test_trace_with_state_and_attention_round_trips_through_hdf5(tmp_path):
    pytest.importorskip("h5py")
    hf = hf_model(48, vocab=20, d=16, layers=1, heads=2)
    hf.save_pretrained(tmp_path / "m")
    model = engine.load(tmp_path / "m", device="cpu")
    model.attention_window = ((0, 10), (0, 10))
    trace = engine.run(model, np.arange(30) % 20)
    engine.save_trace(trace, tmp_path / "t.h5")
    back = engine.load_trace(tmp_path / "t.h5")
    np.testing.assert_array_equal(back["layers.0.state"], trace["layers.0.state"])
    np.testing.assert_array_equal(back["layers.0.attn"], trace["layers.0.attn"])
    assert back.specs["layers.0.state"].dims == ("token", "head", "key", "value")
    assert back.model_info["architecture"] == "xlstm"


def test_cli_info_lists_the_xlstm_probes(tmp_path, capsys):
    from engine.cli import main

    hf = hf_model(49, vocab=20, d=16, layers=1, heads=2)
    hf.save_pretrained(tmp_path)
    main(["info", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "xlstm" in out and "layers.0.state" in out and "layers.0.gate_f" in out and "[2, 4, 8]" in out


def test_seqscope_save_model_round_trips(tmp_path):
    hf = hf_model(50, vocab=20, d=16, layers=2, heads=2, use_bias=True)
    hf.save_pretrained(tmp_path / "hf")
    model = engine.load(tmp_path / "hf", device="cpu")
    from engine.loading import save_model

    path = save_model(model, tmp_path / "x.safetensors")
    back = engine.load(path, device="cpu")
    assert back.config == model.config
    ids = np.arange(40) % 20
    np.testing.assert_array_equal(engine.run(back, ids, probes="logits")["logits"],
                                  engine.run(model, ids, probes="logits")["logits"])



def test_num_blocks_decides_where_num_hidden_layers_is_an_unused_default(tmp_path):
    # xLSTMConfig(num_blocks=2) keeps num_hidden_layers at its default 32 in config.json; the
    # model has 2 blocks, and SeqScope once read 32 and refused the folder
    hf = hf_model(41, vocab=41, d=32, layers=32, heads=4, num_blocks=2)
    assert len(hf.backbone.blocks) == 2
    hf.save_pretrained(tmp_path)
    stated = json.loads((tmp_path / "config.json").read_text())
    assert stated["num_blocks"] == 2 and stated["num_hidden_layers"] == 32
    model = engine.load(tmp_path, device="cpu")
    assert model.config.n_layer == 2
    ids = np.random.default_rng(1).integers(0, 41, 60)
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], hf_logits(hf, ids),
                               atol=5e-5, rtol=5e-5)
