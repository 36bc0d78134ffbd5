"""NumPy ``.npz`` weight archives (``np.savez(path, **state_dict)``) load like a state dict and
run exactly as the torch module they came from; damaged or lying archives are refused in words;
GGML/GGUF files are named as such."""
import io
import zipfile

import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError


class CharRNN(torch.nn.Module):
    def __init__(self, vocab=7, hidden=12):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 5)
        self.rnn = torch.nn.LSTM(5, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0])


CHARS = "abcde \n"


@pytest.fixture()
def module():
    torch.manual_seed(3)
    return CharRNN().eval()


def save_npz(module, path, **extra):
    np.savez(path, **{k: v.detach().numpy() for k, v in module.state_dict().items()}, **extra)
    return path


def test_an_npz_state_dict_runs_as_the_module(module, tmp_path):
    path = save_npz(module, tmp_path / "weights.npz", chars=np.array(list(CHARS)))
    model = engine.load(path)
    text = "abc de\nba"
    trace = engine.run(model, text, probes=["logits", "layers.1.h"])
    ids = torch.tensor([[CHARS.index(c) for c in text]])
    with torch.no_grad():
        expected = module(ids)[0].numpy()
    np.testing.assert_allclose(trace["logits"], expected, atol=1e-5, rtol=1e-5)
    assert "npz" in model.info()["notes"]


def test_a_compressed_npz_without_a_vocabulary_reads_token_ids(module, tmp_path):
    path = tmp_path / "w.npz"
    np.savez_compressed(path, **{k: v.detach().numpy() for k, v in module.state_dict().items()})
    model = engine.load(path)
    trace = engine.run(model, [0, 3, 6, 2], probes=["logits"])
    with torch.no_grad():
        expected = module(torch.tensor([[0, 3, 6, 2]]))[0].numpy()
    np.testing.assert_allclose(trace["logits"], expected, atol=1e-5, rtol=1e-5)


def npz_with(entries: dict[str, bytes], path):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("case, words", [
    ("object", "not numbers"),
    ("lying-shape", "holds only"),
    ("garbage-header", "header is damaged"),
    ("text-2d", "only a 1-D list of strings"),
])
def test_bad_archives_are_refused_in_one_sentence(case, words, tmp_path):
    good = npy_bytes(np.zeros((4, 3), np.float32))
    entries = {
        "object": {"w.npy": npy_bytes(np.array([{"a": 1}], dtype=object))},
        "lying-shape": {"w.npy": good.replace(b"(4, 3)", b"(400000000, 3)")},
        "garbage-header": {"w.npy": good[:10] + b"{'descr': <f4, 'shape': ((((" + good[40:]},
        "text-2d": {"w.npy": good, "chars.npy": npy_bytes(np.array([["a", "b"], ["c", "d"]]))},
    }[case]
    with pytest.raises(LoadError, match=words) as err:
        engine.load(npz_with(entries, tmp_path / f"{case}.npz"))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


@pytest.mark.parametrize("magic, words", [(b"GGUF", "GGUF"), (b"fmgg", "GGML"), (b"tjgg", "GGML")])
def test_ggml_and_gguf_files_are_named(tmp_path, magic, words):
    path = tmp_path / "model.bin"
    path.write_bytes(magic + bytes(range(60)))
    with pytest.raises(LoadError, match=f"is a {words}.*llama.cpp / rwkv.cpp"):
        engine.load(path)
