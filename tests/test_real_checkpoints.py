"""Real checkpoints as their packages on the Python package index ship them (tests/data/real/SOURCES.md
says which, with licences and sha256): each either loads faithfully, checked against the original
computation rebuilt in torch from the same arrays (read independently of SeqScope; float32 on both
sides, atol 1e-5), or is refused with the reason and the way out.  Files over 2 MB are fetched by
packaging/fetch_real_checkpoints.sh; their tests skip when the file is absent."""
import io
import pickle
import zipfile
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
    _check_lstm_cell(model, cell, np.random.default_rng(1).normal(size=(20, 128)).astype(np.float32))


def _check_lstm_cell(model, cell: torch.nn.LSTMCell, x: np.ndarray) -> None:
    """The model's layer 0 against ``cell`` stepped by hand over the rows of ``x`` (atol 1e-5)."""
    trace = engine.run(model, x, probes=["layers.0.h", "layers.0.c"])
    h = c = torch.zeros(1, cell.hidden_size)
    hs, cs = [], []
    with torch.no_grad():
        for t in range(len(x)):
            h, c = cell(torch.from_numpy(x[t:t + 1]), (h, c))
            hs.append(h[0])
            cs.append(c[0])
    shape = (len(x), cell.hidden_size)
    np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(shape), torch.stack(hs).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(trace["layers.0.c"]).reshape(shape), torch.stack(cs).numpy(), atol=1e-5)


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


class _TorchScriptTensors(pickle.Unpickler):
    """The reference reader of a TorchScript archive's data.pkl: torch's tensor rebuild and the
    archive's storages; every ``__torch__`` class an empty object holding its attributes.  No
    TorchScript code is compiled or run (``torch.jit.load`` would)."""

    class Obj:
        def __setstate__(self, state):
            self.__dict__.update(state)

    def __init__(self, z: "zipfile.ZipFile", prefix: str):
        super().__init__(io.BytesIO(z.read(prefix + "data.pkl")))
        self.z, self.prefix = z, prefix

    def find_class(self, module, name):
        if (module, name) in {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                              ("torch", "FloatStorage")}:
            return super().find_class(module, name)
        if module.startswith("__torch__"):
            return self.Obj
        if module == "torch.jit._pickle":  # typed lists and dicts: the value itself
            return lambda value, *_: value
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a TorchScript module tree")

    def persistent_load(self, pid):
        _, stype, key, _location, numel = pid
        data = self.z.read(f"{self.prefix}data/{key}")
        raw = torch.frombuffer(bytearray(data), dtype=torch.float32) if data else torch.empty(0)
        assert stype is torch.FloatStorage and raw.numel() == numel
        return torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=torch.float32, _internal=True)


def test_silero_vad_torchscript_archive_loads_each_lstm_cell_from_the_offered_config(monkeypatch):
    """silero-vad 6.2.3's silero_vad.jit: a TorchScript archive of two networks (16 kHz under
    _model, 8 kHz under _model_8k), each STFT → convolutions → LSTMCell(128) → Conv1d head.  Its
    tensors are read without running its code; the refusal names the second network as not
    stacked on the first and offers a config for the first; each cell loads with strict=False and
    matches torch.nn.LSTMCell holding the archive's tensors (read by a reference unpickler)."""
    path = _fetched("silero_vad.jit")
    for route in ("load", "_get_trace_graph"):
        monkeypatch.setattr(torch.jit, route, lambda *a, **k: pytest.fail("TorchScript was loaded"))
    monkeypatch.setattr(torch._C, "import_ir_module", lambda *a, **k: pytest.fail("TorchScript was loaded"))
    with pytest.raises(LoadError, match="another recurrent network too") as info:
        engine.load(path, device="cpu")
    message = str(info.value)
    assert "_model_8k.decoder.rnn.weight_ih" in message.split("another recurrent network too")[1]
    import ast

    start = message.index("config=") + len("config=")
    offered = ast.literal_eval(message[start:message.index("}}", start) + 2])
    assert offered["num_layers"] == 1 and set(offered["key_map"]) == {
        f"_model.decoder.rnn.{k}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    with zipfile.ZipFile(path) as z:
        prefix = next(n for n in z.namelist() if n.endswith("/data.pkl"))[: -len("data.pkl")]
        top = _TorchScriptTensors(z, prefix).load()
    x = np.random.default_rng(4).normal(size=(20, 128)).astype(np.float32)
    for network in ("_model", "_model_8k"):
        cfg = dict(offered, key_map={k.replace("_model.", f"{network}.", 1): v for k, v in offered["key_map"].items()})
        model = engine.load(path, config=cfg, strict=False, device="cpu")
        assert (model.config.cell, model.config.input_size, model.config.hidden_size) == ("lstm", 128, 128)
        assert model.config.vocab_size is None and model.config.output_size is None
        notes = model.load_info["notes"]
        assert "TorchScript archive" in notes and "its code (the forward) was not read" in notes
        assert "unused tensors (strict=False): _state [0], _context [0], _model.stft.forward_basis_buffer" in notes
        assert network == "_model_8k" or "_model.decoder.decoder.2.weight" in notes  # the conv head: not logits
        rnn = getattr(top, network).decoder.rnn
        cell = torch.nn.LSTMCell(128, 128)
        cell.load_state_dict({k: getattr(rnn, k) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        _check_lstm_cell(model, cell, x)


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
