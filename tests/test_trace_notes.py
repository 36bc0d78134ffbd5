"""Characters outside a model's vocabulary are counted and said in the trace's notes, which
survive a trace file and are printed by ``seqscope trace``."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.tokenizers import CharVocab

ROOT = Path(__file__).resolve().parents[1]
CHAR_MODEL = ROOT / "assets" / "models" / "char-lstm-python" / "model.safetensors"


def test_unknown_characters_are_counted_with_examples():
    vocab = CharVocab(list("abc ") + ["\ufffd"], unknown="\ufffd")
    assert vocab.unknown_note("abc cab") is None
    note = vocab.unknown_note("cab\u00e9 \u00fcber \u00e9")  # é, ü, e, r, é are not in it
    assert note.startswith("5 characters are not in the model's vocabulary (e.g. 'é', 'ü', 'e')")
    assert "unknown token" in note
    assert vocab.unknown_note("é").startswith("1 character is not")
    assert CharVocab(list("abc")).unknown_note("xyz") is None  # no unknown symbol: encode refuses instead


@pytest.fixture(scope="module")
def char_model():
    return engine.load(CHAR_MODEL, device="cpu")


def test_a_run_notes_its_unknown_characters_and_the_file_keeps_them(char_model, tmp_path):
    trace = engine.run(char_model, "s = 'naïve café'\n", probes=["logits"])
    assert len(trace.notes) == 1 and trace.notes[0].startswith("2 characters are not in the model's vocabulary")
    assert trace.token_text[7] == "ï"  # the text keeps the character; the id is the unknown token's
    unk = char_model.tokenizer.index["\ufffd"]
    assert int(trace.tokens[7]) == unk
    engine.save_trace(trace, tmp_path / "t.h5")
    assert engine.load_trace(tmp_path / "t.h5").notes == trace.notes
    clean = engine.run(char_model, "plain ascii\n", probes=["logits"])
    assert clean.notes == ()
    engine.save_trace(clean, tmp_path / "c.h5")
    assert engine.load_trace(tmp_path / "c.h5").notes == ()


def test_each_input_of_several_is_named_in_its_note(char_model):
    trace = engine.run(char_model, ["fine\n", "é\n"], probes=["logits"])
    assert trace.notes == ("input 1: 1 character is not in the model's vocabulary (e.g. 'é'); it was read as "
                           "the unknown token '\ufffd'",)


def test_notes_must_be_strings():
    with pytest.raises(ValueError):
        engine.Trace(tokens=np.zeros(1), offsets=[0, 1], arrays={}, specs={}, notes=[3])


def test_seqscope_trace_prints_the_note(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine.cli", "trace", str(CHAR_MODEL), "--text", "x = 'é'",
                          "--probes", "logits", "-o", str(tmp_path / "t.h5")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "seqscope: note: 1 character is not in the model's vocabulary (e.g. 'é')" in out.stderr


def test_a_trace_file_whose_notes_are_not_a_list_of_strings_is_refused(char_model, tmp_path):
    import h5py

    from engine.errors import SeqScopeError

    path = tmp_path / "t.h5"
    engine.save_trace(engine.run(char_model, "x\n", probes=["logits"]), path)
    for bad in ("5", '{"a": 1}', "[1, 2]", "not json"):
        with h5py.File(path, "r+") as f:
            f.attrs["notes"] = bad
        with pytest.raises(SeqScopeError, match="notes attribute is not|not valid JSON|is a damaged trace"):
            engine.load_trace(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["notes"]  # a file from before notes
    assert engine.load_trace(path).notes == ()
