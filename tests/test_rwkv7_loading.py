"""Loading RWKV-7 checkpoints as users have them: BlinkDL ``.pth`` files (``torch.save`` of the
state dict, as the ``rwkv`` package reads them; released weights are bf16; no config), with
vectors saved [1, 1, C] or flat and with or without layer 0's unused v0/v1/v2; wrong, missing
or extra keys give a LoadError naming them; RWKV-4, Mamba and LSTM checkpoints are not claimed
by the RWKV-7 loader, nor RWKV-7 files by the RWKV-4 one.  Also: RWKV-7 traces in HDF5."""
import numpy as np
import pytest
import torch

import engine
from engine import LoadError
from engine.models import rwkv7_loading, rwkv_loading
from engine.models.rwkv7 import Rwkv7Model
from rwkv7_reference import float64_weights, random_state_dict, reference_rwkv7


def save(sd, path):
    torch.save(sd, path)
    return path


def test_a_pth_file_loads_without_a_config(tmp_path):
    sd = random_state_dict(40, vocab=41, C=24, heads=3, layers=3, ffn=40, d_w=5, d_a=7, d_v=3, d_g=9)
    model = engine.load(save(sd, tmp_path / "RWKV-x070-tiny.pth"), device="cpu")
    assert isinstance(model, Rwkv7Model)
    info = model.info()
    assert info["architecture"] == "rwkv7" and info["layout"] == "BlinkDL RWKV-7" and "notes" not in info
    c = model.config
    assert (c.d_model, c.n_head, c.head_size, c.n_layer, c.d_ffn, c.vocab_size) == (24, 3, 8, 3, 40, 41)
    assert (c.d_decay, c.d_aaa, c.d_mv, c.d_gate) == (5, 7, 3, 9)
    ids = np.random.default_rng(0).integers(0, 41, 50)
    ref = reference_rwkv7(float64_weights(sd), ids)["logits"]
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], ref, atol=5e-5, rtol=5e-5)


def test_released_bf16_weights_flat_vectors_and_layer0_values_load(tmp_path):
    """As released: bf16 tensors; some savers keep vectors flat; some files hold layer 0's v0,
    v1, v2, which layer 0 does not use (its v is v_first): noted, not an error."""
    sd = random_state_dict(41, layers=2, layer0_v=True, dtype=torch.bfloat16)
    flat = {k: v.reshape(-1) if v.ndim == 3 else v for k, v in sd.items()}
    model = engine.load(save(flat, tmp_path / "m.pth"), device="cpu")
    assert model.dtype == torch.float32
    assert "blocks.0.att.v0" in model.info()["notes"]
    ids = np.arange(30) % 37
    ref = reference_rwkv7(float64_weights(sd), ids)["logits"]
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], ref, atol=5e-5, rtol=5e-5)


def test_a_common_prefix_is_accepted(tmp_path):
    sd = random_state_dict(42, layers=1)
    model = engine.load(save({"model." + k: v for k, v in sd.items()}, tmp_path / "m.pth"), device="cpu")
    plain = engine.load(save(sd, tmp_path / "p.pth"), device="cpu")
    ids = np.arange(20) % 37
    np.testing.assert_array_equal(engine.run(model, ids, probes="logits")["logits"],
                                  engine.run(plain, ids, probes="logits")["logits"])


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("blocks.1.att.k_a"), "missing blocks.1.att.k_a"),
    (lambda sd: sd.pop("head.weight"), "missing head.weight"),
    (lambda sd: sd.__setitem__("blocks.1.att.w2", torch.zeros(8, 15)), r"blocks.1.att.w2 is \[8, 15\], expected \[8, 16\]"),
    (lambda sd: sd.__setitem__("blocks.0.att.gate.weight", torch.zeros(16, 16)), "unexpected blocks.0.att.gate.weight"),
    (lambda sd: sd.__setitem__("blocks.0.att.r_k", torch.zeros(3, 5)), "not a multiple of head_size"),
])
def test_bad_files_name_the_keys(tmp_path, change, message):
    sd = random_state_dict(43, layers=2)
    change(sd)
    with pytest.raises(LoadError, match=message):
        engine.load(save(sd, tmp_path / "bad.pth"), device="cpu")


def test_strict_false_ignores_extra_tensors_with_a_note(tmp_path):
    sd = random_state_dict(44, layers=1)
    sd["blocks.0.att.time_state"] = torch.zeros(2, 8, 8)
    model = engine.load(save(sd, tmp_path / "m.pth"), device="cpu", strict=False)
    assert "blocks.0.att.time_state" in model.info()["notes"]


def lstm_tensors():
    torch.manual_seed(0)
    return {f"lstm.{k}": v for k, v in torch.nn.LSTM(4, 8, num_layers=2).state_dict().items()}


def test_other_families_are_not_claimed_and_rwkv4_does_not_claim_rwkv7(tmp_path):
    v7 = random_state_dict(45, layers=2)
    assert rwkv7_loading.looks_like(v7, []) and not rwkv_loading.looks_like(v7, [])
    assert not rwkv7_loading.looks_like(lstm_tensors(), [])
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    mamba = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=20, hidden_size=8, state_size=4,
                                                                   num_hidden_layers=1)).state_dict()
    rwkv4 = transformers.RwkvForCausalLM(transformers.RwkvConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
                                                                 context_length=64)).state_dict()
    blink4 = {k.removeprefix("rwkv.").replace(".attention.", ".att.").replace(".feed_forward.", ".ffn.")
              .replace("embeddings.", "emb.").replace("blocks.0.pre_ln", "blocks.0.ln0"): v for k, v in rwkv4.items()}
    for tensors in (mamba, rwkv4, blink4):
        assert not rwkv7_loading.looks_like(tensors, [])
    assert rwkv_loading.looks_like(blink4, []) and rwkv_loading.looks_like(rwkv4, [])
    assert type(engine.load(save(blink4, tmp_path / "rwkv4.pth"), device="cpu")).__name__ == "RwkvModel"
    assert type(engine.load(save(v7, tmp_path / "rwkv7.pth"), device="cpu")).__name__ == "Rwkv7Model"


def test_traces_with_the_state_and_attention_round_trip_through_hdf5(tmp_path):
    model = engine.load(save(random_state_dict(46, layers=1), tmp_path / "m.pth"), device="cpu")
    model.attention_window = ((0, 20), (0, 20))
    trace = engine.run(model, [np.arange(25) % 37, np.arange(12) % 37])
    path = engine.save_trace(trace, tmp_path / "t.h5")
    back = engine.load_trace(path)
    assert back.specs["layers.0.state"].dims == ("token", "head", "value", "key")
    for name in ("layers.0.state", "layers.0.attn", "logits"):
        np.testing.assert_array_equal(back.array(name, 1), trace.array(name, 1))


WORLD_VOCAB = [  # id literal length, as rwkv_vocab_v20230424.txt writes them: str and bytes literals
    "1 'a' 1", "2 'b' 1", "3 'ab' 2", "4 'abc' 3", "5 ' ' 1", "6 '\\n' 1", "7 'é' 2", "8 b'\\xc3' 1",
    "9 b'\\xa9' 1", "10 ' ab' 3",
]


def test_a_world_vocabulary_beside_the_pth_makes_text_input_work(tmp_path):
    from engine.tokenizers import RwkvWorldTokenizer

    (tmp_path / "rwkv_vocab_v20230424.txt").write_text("\n".join(WORLD_VOCAB) + "\n", encoding="utf-8")
    model = engine.load(save(random_state_dict(1, vocab=16), tmp_path / "m.pth"), device="cpu")
    assert isinstance(model.tokenizer, RwkvWorldTokenizer)
    assert model.info()["vocabulary"].endswith("rwkv_vocab_v20230424.txt")
    trace = engine.run(model, "abcab é\nab")
    # greedy longest match over the UTF-8 bytes: 'abc', 'ab', ' ', 'é', '\n', 'ab'
    np.testing.assert_array_equal(trace.tokens, [4, 3, 5, 7, 6, 3])
    assert "".join(trace.token_text) == "abcab é\nab"
    ids, pieces = model.tokenizer.encode("b ab\xe9")  # ' ab' beats ' ' + 'ab'
    assert ids.tolist() == [2, 10, 7] and "".join(pieces) == "b ab\xe9"


def test_a_world_vocabulary_that_cannot_be_read_is_noted_not_fatal(tmp_path):
    (tmp_path / "rwkv_vocab_bad.txt").write_text("1 'a' 5\n", encoding="utf-8")  # length does not match
    model = engine.load(save(random_state_dict(1, vocab=16), tmp_path / "m.pth"), device="cpu")
    assert model.tokenizer is None
    assert "rwkv_vocab_bad.txt" in model.info()["notes"] and "could not be read" in model.info()["notes"]


def test_world_tokenizer_encodes_as_the_rwkv_package_does():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("rwkv")
    if spec is None or spec.origin is None:
        pytest.skip("the rwkv package is not installed")
    folder = Path(spec.origin).parent
    vocab = folder / "rwkv_vocab_v20230424.txt"
    ref_spec = importlib.util.spec_from_file_location("rwkv_tokenizer_ref", folder / "rwkv_tokenizer.py")
    ref_mod = importlib.util.module_from_spec(ref_spec)
    ref_spec.loader.exec_module(ref_mod)  # the tokenizer module alone, not the package's model code
    ref = ref_mod.TRIE_TOKENIZER(str(vocab))
    from engine.tokenizers import RwkvWorldTokenizer

    ours = RwkvWorldTokenizer(vocab)
    for text in ["Hello, world!\n    return x ** 2\n", "naïve café — 日本語のテキスト 🙂",
                 Path(engine.__file__).with_name("run.py").read_text()[:5000]]:
        ids, pieces = ours.encode(text)
        assert ids.tolist() == ref.encode(text)
        assert "".join(pieces) == text
