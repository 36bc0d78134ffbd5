"""Real checkpoints as their packages on the Python package index ship them (tests/data/real/SOURCES.md
says which, with licences and sha256): each either loads faithfully, checked against the original
computation rebuilt in torch from the same arrays (read independently of SeqScope; float32 on both
sides, atol 1e-5), or is refused with the reason and the way out.  Files over 2 MB are fetched by
packaging/fetch_real_checkpoints.sh; their tests skip when the file is absent."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError

REAL = Path(__file__).parent / "data" / "real"
FETCHED = REAL / "fetched"


def _fetched(name: str) -> Path:
    path = FETCHED / name
    if not path.is_file():
        pytest.skip(f"{name} is fetched by packaging/fetch_real_checkpoints.sh")
    return path


class _NumpyOnly(pickle.Unpickler):
    """The reference reader of a pickle of NumPy arrays: NumPy's array machinery and nothing else."""

    def find_class(self, module, name):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}:
            import numpy.core.multiarray  # noqa: F401
            return getattr(__import__(module, fromlist=[name]), name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a NumPy array")


def _bidirectional_lstm(arrays: dict, prefix: str, num_layers: int) -> torch.nn.LSTM:
    w = {k[len(prefix):]: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()
         if k.startswith(prefix)}
    lstm = torch.nn.LSTM(w["weight_ih_l0"].shape[1], w["weight_hh_l0"].shape[1], num_layers=num_layers,
                         bidirectional=True)
    lstm.load_state_dict(w)
    return lstm.eval()


def test_g2pm_numpy_pickle_loads_its_bilstm_core_without_its_mlp_head():
    """g2pM 0.1.2.5 (kakaobrain): a plain pickle of NumPy arrays (no torch.save) of embedding →
    bidirectional LSTM(64→32) → Linear(64→32) → ReLU → Linear(32→876).  The MLP head is no single
    linear head: the core loads (strict: the head's tensors are accounted for) without logits, and
    the notes say why."""
    path = REAL / "g2pm" / "np_ckpt.pkl"
    model = engine.load(path, device="cpu")
    assert "not one linear layer" in model.load_info["notes"] and "records no logits" in model.load_info["notes"]
    assert (model.config.cell, model.config.bidirectional, model.config.hidden_size) == ("lstm", True, 32)
    assert model.config.vocab_size == 5398 and model.config.output_size is None
    assert "logit_layer.2.weight" in model.load_info["notes"]
    with open(path, "rb") as f:
        arrays = _NumpyOnly(f).load()
    lstm = _bidirectional_lstm(arrays, "lstm.", 1)
    ids = np.random.default_rng(0).integers(0, 5398, 17)
    trace = engine.run(model, ids, probes=["layers.0.h", "layers.0.c"])
    with torch.no_grad():
        x = torch.as_tensor(arrays["embedding.weight"])[torch.as_tensor(ids)]
        h_ref, _ = lstm(x[:, None, :])
    np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(17, 64), h_ref[:, 0].numpy(), atol=1e-5)


def test_silero_vad_safetensors_loads_its_lstm_cell_core_on_strict_false():
    """silero-vad 6.2.3: STFT and convolutions → LSTMCell(128) → ReLU → Conv1d(128→1, k=1) →
    sigmoid, one step per 512-sample chunk.  The convolutions are named in the refusal; with
    strict=False the LSTM cell loads reading the encoder's 128 features as numeric inputs, and the
    ReLU-then-convolution output is not taken for a linear head."""
    path = REAL / "silero_vad" / "silero_vad_16k.safetensors"
    with pytest.raises(LoadError, match=r"11 tensors in the file would be left unused: conv1\.bias.*stft_conv"):
        engine.load(path, device="cpu")
    model = engine.load(path, strict=False, device="cpu")
    assert (model.config.cell, model.config.input_size, model.config.hidden_size) == ("lstm", 128, 128)
    assert model.config.vocab_size is None and model.config.output_size is None
    assert "final_conv.weight" in model.load_info["notes"]
    from safetensors.torch import load_file

    w = load_file(path)
    cell = torch.nn.LSTMCell(128, 128)
    cell.load_state_dict({k[len("lstm_cell."):]: v for k, v in w.items() if k.startswith("lstm_cell.")})
    x = np.random.default_rng(1).normal(size=(20, 128)).astype(np.float32)
    trace = engine.run(model, x, probes=["layers.0.h", "layers.0.c"])
    h = c = torch.zeros(1, 128)
    hs, cs = [], []
    with torch.no_grad():
        for t in range(20):
            h, c = cell(torch.from_numpy(x[t:t + 1]), (h, c))
            hs.append(h[0])
            cs.append(c[0])
    np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(20, 128), torch.stack(hs).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(trace["layers.0.c"]).reshape(20, 128), torch.stack(cs).numpy(), atol=1e-5)


def test_attacut_convolutional_tokenizer_is_refused_as_having_no_recurrent_layer():
    """attacut 1.0.6's attacut-c: embedding → three Conv1d → two Linear; nothing recurrent."""
    with pytest.raises(LoadError) as info:
        engine.load(REAL / "attacut_c" / "model.pth", device="cpu")
    message = str(info.value)
    assert "no recurrent layer found" in message and "conv1.conv.weight [196, 48, 3]" in message
    assert "no two matrices in this file have the shapes of a recurrent layer" in message


def test_language_identifier_bilstm_loads_with_its_vocabulary_and_per_step_logits():
    """LanguageIdentifier 1.1.1: a dict of char_to_idx (with a bare "PAD" entry), lang_to_idx and a
    state dict of Embedding(682, 150) → 2-layer bidirectional LSTM(150) → Linear(300 → 20) applied
    at every step (the package sums the steps' logits)."""
    path = _fetched("LID_mixed_model.pkl")
    model = engine.load(path, device="cpu")
    notes = model.load_info.get("notes", "")
    assert "token ids" not in notes and "special entries (PAD)" in notes
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt["model_state_dict"]
    lstm = _bidirectional_lstm({k: v.numpy() for k, v in sd.items()}, "lstm.", 2)
    text = "Det her er dansk"
    ids = [ckpt["char_to_idx"][c] for c in text]
    trace = engine.run(model, text, probes=["logits"])
    with torch.no_grad():
        h, _ = lstm(sd["char_embeddings.weight"][torch.tensor(ids)][:, None, :])
        logits = h[:, 0] @ sd["hidden2lang.weight"].T + sd["hidden2lang.bias"]
    np.testing.assert_allclose(trace["logits"], logits.numpy(), atol=1e-5)
    langs = sorted(ckpt["lang_to_idx"], key=ckpt["lang_to_idx"].get)
    assert langs[int(np.argmax(np.asarray(trace["logits"]).sum(0)))] == "da"  # what the package predicts


def test_g2p_en_encoder_and_decoder_load_as_two_models_from_the_configs_the_message_offers():
    """g2p_en 2.1.0: an .npz of a GRU encoder (enc_*) and a GRU decoder (dec_*, fc_w/fc_b) that
    starts from the encoder's final state.  The refusal offers the encoder's config and names the
    decoder as a network of its own; both load and match torch GRUs built from the same arrays."""
    path = _fetched("g2p_en_checkpoint20.npz")
    with pytest.raises(LoadError, match="another recurrent network too") as info:
        engine.load(path, device="cpu")
    import ast

    message = str(info.value)
    start = message.index("config=") + len("config=")
    cfg = ast.literal_eval(message[start:message.index("}}", start) + 2])
    encoder = engine.load(path, config=cfg, strict=False, device="cpu")
    decoder = engine.load(path, strict=False, device="cpu", config={
        "cell": "gru", "num_layers": 1, "hidden_size": 256, "input_size": 256, "vocab_size": 74, "output_size": 74,
        "key_map": {"dec_emb": "embed.weight", "dec_w_ih": "rnn.weight_ih_l0", "dec_w_hh": "rnn.weight_hh_l0",
                    "dec_b_ih": "rnn.bias_ih_l0", "dec_b_hh": "rnn.bias_hh_l0", "fc_w": "head.weight",
                    "fc_b": "head.bias"}})
    arrays = dict(np.load(path))
    for model, side, n, head in ((encoder, "enc", 29, False), (decoder, "dec", 74, True)):
        gru = torch.nn.GRU(256, 256)
        gru.load_state_dict({f"{kind}_{which}_l0": torch.from_numpy(arrays[f"{side}_{kind[0]}_{which}"])
                             for kind in ("weight", "bias") for which in ("ih", "hh")})
        ids = np.random.default_rng(2).integers(0, n, 9)
        trace = engine.run(model, ids, probes=["layers.0.h"] + (["logits"] if head else []))
        with torch.no_grad():
            h, _ = gru(torch.from_numpy(arrays[f"{side}_emb"])[torch.as_tensor(ids)][:, None, :])
        np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(9, 256), h[:, 0].numpy(), atol=1e-5)
        if head:
            expected = h[:, 0].numpy() @ arrays["fc_w"].T + arrays["fc_b"]
            np.testing.assert_allclose(trace["logits"], expected, atol=1e-4)


def test_silero_vad_torchscript_archive_is_refused_in_words_and_nothing_runs(tmp_path, monkeypatch):
    path = _fetched("silero_vad.jit")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("TorchScript was loaded"))
    with pytest.raises(LoadError, match=r"TorchScript archive \(torch\.jit\.save\), which holds code.*state_dict"):
        engine.load(path, device="cpu")


def test_an_onnx_export_is_named_as_such(tmp_path):
    """silero-vad ships its model as ONNX too; such a file starts as these bytes (the first 32 of
    silero_vad_16k_op15.onnx: ir_version 8, producer "pytorch" 2.x) and is refused by name."""
    head = bytes.fromhex("080812077079746f7263681a05322e332e313ae9da4e0a4512126f6e6e783a3a")
    (tmp_path / "vad.onnx").write_bytes(head + bytes(200))
    with pytest.raises(LoadError, match=r"vad\.onnx looks like an ONNX model .* exported from"):
        engine.load(tmp_path / "vad.onnx", device="cpu")


def test_legere_crnn_loads_its_bigru_and_ctc_head_on_strict_false():
    """legere 0.11.0 (OCR): a depthwise-separable CNN over the image → bidirectional GRU(192 → 128)
    over the width → Linear(256 → 122) at every step (CTC classes).  The CNN is named in the
    refusal; with strict=False the GRU reads the CNN's 192 features per column as numeric inputs,
    and its per-step head is the model's own."""
    path = REAL / "legere" / "model.pt"
    with pytest.raises(LoadError, match=r"65 tensors in the file would be left unused: stem\.0\.weight"):
        engine.load(path, device="cpu")
    model = engine.load(path, strict=False, device="cpu")
    assert (model.config.cell, model.config.bidirectional, model.config.input_size) == ("gru", True, 192)
    assert model.config.output_size == 122 and model.config.vocab_size is None
    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    gru = torch.nn.GRU(192, 128, bidirectional=True)
    gru.load_state_dict({k[len("rnn."):]: v for k, v in sd.items() if k.startswith("rnn.")})
    x = np.random.default_rng(3).normal(size=(24, 192)).astype(np.float32)
    trace = engine.run(model, x, probes=["layers.0.h", "logits"])
    with torch.no_grad():
        h, _ = gru(torch.from_numpy(x)[:, None, :])
        logits = h[:, 0] @ sd["head.weight"].T + sd["head.bias"]
    np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(24, 256), h[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(trace["logits"], logits.numpy(), atol=1e-5)
