"""engine.corpus.sources: every kind of corpus, read lazily, numbered stably."""
import json

import numpy as np
import pytest

import engine
from engine.corpus.sources import MAX_DOCUMENT_CHARS, Corpus, CorpusError, sequences

CHAR_LSTM = "assets/models/char-lstm-python"


@pytest.fixture(scope="module")
def model():
    return engine.load(CHAR_LSTM)


def texts(corpus):
    return [(d.name, d.text) for d in corpus.documents()]


def test_folder_glob_sorted_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("zz")
    (tmp_path / "a.py").write_text("aa")
    (tmp_path / "c.txt").write_text("cc")
    (tmp_path / "bad.py").write_bytes(b"x\xffy")
    assert texts(Corpus(tmp_path, glob="*.py")) == [("a.py", "aa"), ("b/z.py", "zz"), ("bad.py", "x\ufffdy")]
    assert [n for n, _ in texts(Corpus(tmp_path))] == ["a.py", "b/z.py", "bad.py", "c.txt"]
    with pytest.raises(CorpusError, match="no files match"):
        list(Corpus(tmp_path, glob="*.rs").documents())


def test_text_file_splits(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("one\ntwo\n\n\nthree\n\nfour")
    assert texts(Corpus(p)) == [("big.txt:1", "one\ntwo\n"), ("big.txt:5", "three\n"), ("big.txt:7", "four")]
    assert [t for _, t in texts(Corpus(p, split="line"))] == ["one\n", "two\n", "three\n", "four"]
    assert [t for _, t in texts(Corpus(p, split="fixed", fixed_chars=7))] == ["one\ntwo", "\n\n\nthre", "e\n\nfour"]
    with pytest.raises(CorpusError, match="--split must be"):
        Corpus(p, split="words")


def test_long_documents_are_cut(tmp_path):
    p = tmp_path / "long.txt"
    p.write_text("x" * (MAX_DOCUMENT_CHARS + 5))
    docs = texts(Corpus(p, split="line"))
    assert [len(t) for _, t in docs] == [MAX_DOCUMENT_CHARS, 5]


def test_jsonl_text_column(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "hi"}) + "\n\n" + json.dumps({"text": "yo", "body": "b"}) + "\n")
    assert texts(Corpus(p)) == [("d.jsonl:1", "hi"), ("d.jsonl:3", "yo")]
    with pytest.raises(CorpusError, match="line 1 of d.jsonl has no text field 'body'"):
        texts(Corpus(p, text_column="body"))
    p.write_text("{not json\n")
    with pytest.raises(CorpusError, match="line 1 of d.jsonl is not JSON"):
        texts(Corpus(p))


def test_parquet_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["ab", None, "cd"]}), p)
    assert texts(Corpus(p)) == [("d.parquet:0", "ab"), ("d.parquet:2", "cd")]


def test_numeric_stack_and_folder(tmp_path):
    stack = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    np.save(tmp_path / "s.npy", stack)
    docs = list(Corpus(tmp_path / "s.npy").documents())
    assert [d.name for d in docs] == ["s.npy[0]", "s.npy[1]"]
    np.testing.assert_array_equal(docs[1].values, stack[1])
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "b.npy", stack[1])
    np.save(folder / "a.npy", stack[0][:3])
    c = Corpus(folder)
    assert c.numeric and [d.values.shape for d in c.documents()] == [(3, 3), (5, 3)]
    np.save(tmp_path / "flat.npy", np.zeros(4))
    with pytest.raises(CorpusError, match="numeric corpus is"):
        list(Corpus(tmp_path / "flat.npy").documents())


def test_sequences_numbering_seq_len_max_tokens_and_start(tmp_path, model):
    (tmp_path / "a.py").write_text("abcdefg")
    (tmp_path / "b.py").write_text("hij")
    c = Corpus(tmp_path)
    seqs = list(sequences(c, model, seq_len=3))
    assert [(s.index, s.name, "".join(s.pieces)) for s in seqs] == [
        (0, "a.py[0]", "abc"), (1, "a.py[1]", "def"), (2, "a.py[2]", "g"), (3, "b.py", "hij")]
    assert [s.ids.tolist() for s in seqs] == [model.tokenizer.encode(s)[0].tolist() for s in ("abc", "def", "g", "hij")]
    cut = list(sequences(c, model, seq_len=3, max_tokens=8))
    assert ["".join(s.pieces) for s in cut] == ["abc", "def", "g", "h"]
    later = list(sequences(c, model, seq_len=3, start=2))
    assert [(s.index, "".join(s.pieces)) for s in later] == [(2, "g"), (3, "hij")]


def test_corpus_and_model_kinds_must_fit(tmp_path, model):
    np.save(tmp_path / "s.npy", np.zeros((1, 4, 2), np.float32))
    with pytest.raises(CorpusError, match="reads tokens"):
        list(sequences(Corpus(tmp_path / "s.npy"), model))
    with pytest.raises(CorpusError, match="no corpus at"):
        Corpus(tmp_path / "missing")
