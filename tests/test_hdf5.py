"""Trace files: exact round trips, the DESIGN.md §3 layout, refusal of newer schemas and
foreign files, atomic writes under failure, and the LSTMVis export."""
import json

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.hdf5 import TraceFileError, export_lstmvis, load_trace, lstmvis_word, save_trace
from engine.models.stack import RecurrentStack, StackConfig
from engine.tokenizers import CharVocab

V, E, H = 11, 8, 16
PIECES = ["a", "b", " ", "\n", "\t", "é", "😀", "<nl>", "x y", "\x00", "z"]


def make_token_model(cell="lstm", layers=2, seed=0):
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(V, E)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](E, H, layers)
    head = torch.nn.Linear(H, V)
    w = {"embed.weight": emb.weight, "head.weight": head.weight, "head.bias": head.bias}
    w.update({"rnn." + k: v for k, v in rnn.state_dict().items()})
    cfg = StackConfig(cell, layers, H, E, vocab_size=V, output_size=V)
    return RecurrentStack(cfg, w, tokenizer=CharVocab(PIECES), source="/models/tiny.pt")


def make_numeric_model(F=3, seed=1):
    torch.manual_seed(seed)
    rnn = torch.nn.GRU(F, H, 1)
    w = {"rnn." + k: v for k, v in rnn.state_dict().items()}
    return RecurrentStack(StackConfig("gru", 1, H, F), w, source="num.pt")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # tiny models: with the machine's other cores busy, torch's thread pool costs 100x (4.6 s vs 16 ms)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def token_model():
    return make_token_model()


@pytest.fixture(scope="module")
def token_trace(token_model):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, V, size=L) for L in (37, 5, 120)]
    patch = rng.standard_normal((120, H)).astype(np.float32)
    ivs = [
        engine.Intervention("layers.0.c", "add", 0.5, positions=range(3, 10), units=[1, 2]),
        engine.Intervention("layers.1.h", "patch", patch, positions=[4, 7]),
        engine.Intervention("layers.0.gate_f", "set", [0.0, 1.0], units=[0, 5]),
    ]
    return engine.run(token_model, seqs, probes="*", interventions=ivs, chunk=16)


def assert_same_trace(a, b):
    assert list(a.arrays) == list(b.arrays)
    for k in a.arrays:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k
    assert a.specs == b.specs
    assert np.array_equal(a.tokens, b.tokens) and b.tokens.dtype == np.int32
    assert np.array_equal(a.offsets, b.offsets) and b.offsets.dtype == np.int64
    assert a.token_text == b.token_text
    if a.inputs is None:
        assert b.inputs is None
    else:
        assert np.array_equal(a.inputs, b.inputs)
    assert dict(a.model_info) == dict(b.model_info)
    assert a.interventions == b.interventions
    assert a.created == b.created


def test_round_trip_token_model(tmp_path, token_trace):
    assert token_trace.n_sequences == 3
    path = tmp_path / "t.h5"
    assert save_trace(token_trace, path) == path
    back = load_trace(path)
    assert_same_trace(token_trace, back)
    assert back.interventions[1].op == "patch" and isinstance(back.interventions[1].value, np.ndarray)
    assert back["layers.0.h"].dtype == np.float32
    # engine's public forwarders reach the same functions
    engine.save_trace(back, tmp_path / "t2.h5")
    assert_same_trace(token_trace, engine.load_trace(tmp_path / "t2.h5"))


def test_layout_matches_schema(tmp_path, token_trace):
    path = tmp_path / "t.h5"
    save_trace(token_trace, path)
    n = token_trace.n_tokens
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "seqscope-trace"
        assert int(f.attrs["schema_version"]) == 1
        assert f.attrs["seqscope_version"] == engine.__version__
        assert f.attrs["created"] == token_trace.created
        ivs = json.loads(f.attrs["interventions"])
        assert [d["op"] for d in ivs] == ["add", "patch", "set"]
        assert "array" in ivs[1]["value"]
        m = f["model"].attrs
        assert m["architecture"] == "lstm" and m["source"] == "/models/tiny.pt"
        assert json.loads(m["config"])["hidden_size"] == H
        assert int(m["parameter_count"]) == token_trace.model_info["parameter_count"] > 0
        assert f["tokens/ids"].dtype == np.int32 and f["tokens/ids"].shape == (n,)
        assert h5py.check_string_dtype(f["tokens/text"].dtype).encoding == "utf-8"
        assert f["sequences/offsets"].dtype == np.int64
        assert f["sequences/offsets"][...].tolist() == [0, 37, 42, 162]
        assert "inputs" not in f
        assert "logits" not in f["probes"] and f["logits"].shape == (n, V)
        names = list(f["probes"])
        assert "layers.0.h" in names and "layers.1.gate_f" in names and "embed" in names
        for name in names:
            ds = f["probes"][name]
            assert ds.dtype == np.float32 and ds.shape[0] == n
            assert ds.chunks is not None and ds.chunks[0] == n  # N < 4096: one chunk of rows
            assert list(ds.attrs["dims"]) == ["token", "unit"]
            assert ds.attrs["description"]
        assert int(f["probes/layers.1.c"].attrs["layer"]) == 1
        assert f["probes/layers.1.c"].attrs["site"] == "c"


def test_unicode_texts_round_trip(tmp_path, token_model):
    # every piece, incl. newline, tab, space, an emoji, a NUL, and a piece with a space inside
    ids = np.arange(V)
    tr = engine.run(token_model, [ids, ids[::-1]], probes="layers.1.h", chunk=16)
    assert "\x00" in tr.token_text and "\n" in tr.token_text
    save_trace(tr, tmp_path / "u.h5")
    back = load_trace(tmp_path / "u.h5")
    assert back.token_text == tr.token_text
    assert back.text(1) == "".join(PIECES[::-1])
    # the text as it is in the file, when no token needs escaping, is the plain token
    tr2 = engine.run(token_model, "ab \n\té😀", probes="layers.1.h")
    save_trace(tr2, tmp_path / "v.h5")
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert f["tokens/text"].asstr()[...].tolist() == ["a", "b", " ", "\n", "\t", "é", "😀"]


def test_round_trip_numeric_float64_float16(tmp_path):
    model = make_numeric_model()
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((L, 3)).astype(np.float32) for L in (20, 9)]
    tr = engine.run(model, xs, chunk=8)
    assert tr.token_text is None and tr.inputs is not None
    save_trace(tr, tmp_path / "n.h5", compression="gzip")
    back = load_trace(tmp_path / "n.h5")
    assert_same_trace(tr, back)
    with h5py.File(tmp_path / "n.h5", "r") as f:
        assert "text" not in f["tokens"]
        assert f["inputs/values"].dtype == np.float32 and f["inputs/values"].shape == (29, 3)
        assert f["probes/layers.0.h"].compression == "gzip"
    # float64 traces stay float64
    model64 = make_numeric_model().to(dtype=torch.float64)
    tr64 = engine.run(model64, xs, chunk=8)
    assert tr64["layers.0.h"].dtype == np.float64
    save_trace(tr64, tmp_path / "n64.h5")
    assert_same_trace(tr64, load_trace(tmp_path / "n64.h5"))
    # float16 on request, and a subset of probes
    save_trace(tr, tmp_path / "n16.h5", dtype="float16", probes="layers.*.h")
    small = load_trace(tmp_path / "n16.h5")
    assert small.probes == ["layers.0.h"] and small["layers.0.h"].dtype == np.float16
    np.testing.assert_allclose(small["layers.0.h"], tr["layers.0.h"], atol=2e-3)


def test_newer_schema_and_foreign_files_refused(tmp_path, token_trace):
    path = tmp_path / "t.h5"
    save_trace(token_trace, path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(TraceFileError, match=r"newer SeqScope \(schema 2\).*reads schema 1.*upgrade SeqScope"):
        load_trace(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=[1, 2])
    with pytest.raises(TraceFileError, match="not a SeqScope trace"):
        load_trace(other)
    with pytest.raises(TraceFileError, match="no trace file"):
        load_trace(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5 at all" * 10)
    with pytest.raises(TraceFileError, match="not HDF5, or it is damaged"):
        load_trace(junk)
    # a truncated real trace file
    good = tmp_path / "good.h5"
    save_trace(token_trace, good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFileError):
        load_trace(trunc)


def _failing_create_dataset(monkeypatch, after_probes=1):
    """Make h5py raise 'No space left on device' when the second probe dataset is created."""
    real = h5py.Group.create_dataset
    seen = []

    def create_dataset(self, name, *args, **kwargs):
        if self.name == "/probes":
            seen.append(name)
            if len(seen) > after_probes:
                raise OSError(28, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    return seen


def test_interrupted_write_leaves_nothing(tmp_path, token_trace, monkeypatch):
    target = tmp_path / "t.h5"
    seen = _failing_create_dataset(monkeypatch)
    with pytest.raises(TraceFileError, match="No space left on device"):
        save_trace(token_trace, target)
    assert len(seen) == 2  # it really failed midway
    assert list(tmp_path.iterdir()) == []

    # an existing file under the target name survives unchanged
    monkeypatch.undo()
    save_trace(token_trace, target, probes="layers.0.h")
    before = target.read_bytes()
    _failing_create_dataset(monkeypatch)
    with pytest.raises(TraceFileError):
        save_trace(token_trace, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]
    monkeypatch.undo()
    assert load_trace(target).probes == ["layers.0.h"]


def test_keyboard_interrupt_cleans_up(tmp_path, token_trace, monkeypatch):
    real = h5py.Group.create_dataset

    def create_dataset(self, name, *args, **kwargs):
        if name == "logits":
            raise KeyboardInterrupt
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    with pytest.raises(KeyboardInterrupt):
        save_trace(token_trace, tmp_path / "t.h5")
    assert list(tmp_path.iterdir()) == []


def test_bad_target(tmp_path, token_trace):
    with pytest.raises(TraceFileError, match="does not exist"):
        save_trace(token_trace, tmp_path / "nope" / "t.h5")
    with pytest.raises(TraceFileError, match="matches no probe"):
        save_trace(token_trace, tmp_path / "t.h5", probes="layers.9.*")


# -- LSTMVis ---------------------------------------------------------------------------


def _read_yml(path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_export_lstmvis(tmp_path, token_model):
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, V, size=30), np.arange(V)]
    tr = engine.run(token_model, seqs, probes="*", chunk=16)
    folder = tmp_path / "proj"
    export_lstmvis(tr, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["lstm.yml", "states.h5", "words.dict"]
    cfg = _read_yml(folder / "lstm.yml")
    assert cfg["name"] and cfg["description"]
    files = cfg["files"]
    ws = cfg["word_sequence"]
    assert {"file", "path", "dict_file"} <= set(ws)
    assert files[ws["file"]].endswith((".h5", ".hdf5")) and files[ws["dict_file"]].endswith(".dict")
    types = cfg["states"]["types"]
    paths = {t["path"]: t for t in types}
    # every per-layer probe, none of embed/logits by default
    assert len(types) == sum(1 for n in tr.probes if n.startswith("layers."))
    assert paths["layers_1_c"]["type"] == "state" and paths["layers_1_h"]["type"] == "output"
    assert paths["layers_0_h"]["layer"] == 1 and paths["layers_1_h"]["layer"] == 2
    assert all(t["type"] in ("state", "output") for t in types)

    lines = (folder / files[ws["dict_file"]]).read_text(encoding="utf-8").splitlines()
    pairs = [line.split() for line in lines]
    assert all(len(p) == 2 for p in pairs)  # exactly `word id`
    words = {int(i): w for w, i in pairs}
    assert len(set(words.values())) == len(words)
    assert words[PIECES.index("\n")] == "<nl>" and words[PIECES.index(" ")] == "<space>"
    assert words[PIECES.index("\t")] == "<tab>" and words[PIECES.index("😀")] == "😀"
    assert words[PIECES.index("x y")] == "x<space>y"

    with h5py.File(folder / files[cfg["states"]["file"]], "r") as f:
        wid = f[ws["path"]][...]
        assert wid.ndim == 1 and np.issubdtype(wid.dtype, np.integer)
        assert np.array_equal(wid, tr.tokens)
        assert set(wid.tolist()) <= set(words)
        st = f["layers_1_c"]
        assert st.dtype == np.float32 and st.shape == (tr.n_tokens, H)
        assert np.array_equal(st[...], tr["layers.1.c"])

    # one sequence, chosen probes
    export_lstmvis(tr, tmp_path / "one", probes=["layers.0.c", "logits"], sequence=1)
    cfg = _read_yml(tmp_path / "one" / "lstm.yml")
    assert [t["path"] for t in cfg["states"]["types"]] == ["layers_0_c", "logits"]
    with h5py.File(tmp_path / "one" / "states.h5", "r") as f:
        assert f["layers_0_c"].shape == (V, H) and f["logits"].shape == (V, V)
        assert f["word_ids"][...].tolist() == list(range(V))


def test_export_lstmvis_numeric_and_nan(tmp_path):
    model = make_numeric_model()
    x = np.random.default_rng(2).standard_normal((12, 3)).astype(np.float32)
    tr = engine.run(model, x)
    export_lstmvis(tr, tmp_path / "num")
    lines = (tmp_path / "num" / "words.dict").read_text().splitlines()
    assert lines[0] == "t0 0" and len(lines) == 12 and all(len(l.split()) == 2 for l in lines)
    with h5py.File(tmp_path / "num" / "states.h5", "r") as f:
        assert f["word_ids"][...].tolist() == list(range(12))

    bad = tr["layers.0.h"].copy()
    bad[4, 2] = np.nan
    tr_nan = engine.Trace(tokens=tr.tokens, offsets=tr.offsets, arrays={"layers.0.h": bad}, specs=tr.specs,
                          inputs=tr.inputs, model_info=tr.model_info)
    with pytest.raises(TraceFileError, match="non-finite.*token 4, cell 2"):
        export_lstmvis(tr_nan, tmp_path / "nan")
    assert not (tmp_path / "nan" / "lstm.yml").exists()


def test_lstmvis_words():
    assert lstmvis_word("\n") == "<nl>" and lstmvis_word("") == "<empty>"
    assert lstmvis_word("a\u00a0b") == "a<U+00A0>b" and lstmvis_word("\x00") == "<U+0000>"
    for s in ["\u2028", "\r\n", "\x0b", " x "]:
        assert len(lstmvis_word(s).split()) == 1
