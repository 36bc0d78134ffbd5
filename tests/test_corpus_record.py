"""engine.corpus.record: a corpus recorded streaming equals the engine run on each sequence, its
summaries equal brute force on the stored arrays, and an interrupted recording (an exception,
Ctrl-C, SIGKILL at a random moment) resumed gives the same file as an uninterrupted one."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import engine
from engine.corpus.journal import JournaledFile, journal_path, recover
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus, sequences
from engine.corpus.summary import Summary, summarize
from engine.corpus.tracefile import CorpusFileError

ROOT = Path(__file__).resolve().parents[1]
CHAR_LSTM = str(ROOT / "assets/models/char-lstm-python")
PROBES = ["layers.0.c", "layers.1.h"]


@pytest.fixture(scope="module")
def model():
    return engine.load(CHAR_LSTM)


@pytest.fixture
def corpus_dir(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    heldout = sorted((ROOT / CHAR_LSTM / "heldout").glob("*.py"))[:3]
    for k, p in enumerate(heldout):
        (folder / f"f{k}.py").write_text(p.read_text()[:300 + 50 * k])
    (folder / "nul.py").write_text("a\x00b = 'x'\n")
    return folder


def datasets(path) -> dict:
    """Every dataset of an HDF5 file, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_files(a, b):
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)


def test_recording_equals_run_per_sequence_and_summaries_equal_brute_force(tmp_path, corpus_dir, model):
    opts = RecordOptions(probes=PROBES, seq_len=128, max_batch=3, k=8, bins=16)
    result = record(model, Corpus(corpus_dir, glob="*.py"), tmp_path / "c.h5", opts)
    assert result.complete and not (tmp_path / "c.h5.partial").exists()
    trace = engine.load_trace(tmp_path / "c.h5")  # the ordinary reader opens it
    seqs = list(sequences(Corpus(corpus_dir, glob="*.py"), model, seq_len=128))
    assert trace.n_sequences == len(seqs) == result.sequences
    # against the engine on each sequence alone (batching may change the last bits: 1e-5)
    for s in seqs:
        alone = engine.run(model, s.ids, probes=PROBES)
        for name in PROBES:
            np.testing.assert_allclose(trace.array(name, s.index), alone.arrays[name], atol=1e-5, rtol=0)
        assert "".join(trace.token_text[trace.sequence_slice(s.index)]) == "".join(s.pieces).replace("\x00", "\u2400")
    assert any("NUL" in n for n in trace.notes)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["sequences/names"].asstr()[0] == "f0.py[0]"
        for name in PROBES:  # streaming summaries == one summary of the whole stored array
            got, ref = Summary.read(f["summary"][name]), summarize(f["probes"][name][()], k=8, bins=16)
            for key, value in ref.arrays().items():
                if key in ("mean", "m2"):
                    np.testing.assert_allclose(got.arrays()[key], value, rtol=1e-9, atol=1e-9)
                else:
                    np.testing.assert_array_equal(got.arrays()[key], value, err_msg=key)


def test_float16_and_compression_store_the_rounded_values(tmp_path, corpus_dir, model):
    c = Corpus(corpus_dir, glob="*.py")
    record(model, c, tmp_path / "a.h5", RecordOptions(probes=PROBES, seq_len=128))
    record(model, c, tmp_path / "b.h5", RecordOptions(probes=PROBES, seq_len=128, dtype="float16", compression="lzf"))
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        for name in PROBES:
            assert fb["probes"][name].dtype == np.float16 and fb["probes"][name].compression == "lzf"
            np.testing.assert_array_equal(fb["probes"][name][()], fa["probes"][name][()].astype(np.float16))
            top = fb["summary"][name]["top_val"][()]
            assert np.all(top == top.astype(np.float16))  # summarised as stored


def test_interrupted_run_resumes_to_the_same_file(tmp_path, corpus_dir, model):
    c = Corpus(corpus_dir, glob="*.py")
    opts = RecordOptions(probes=PROBES, seq_len=64, max_batch=2)
    record(model, c, tmp_path / "whole.h5", opts)
    calls = []

    def stop_after_three(state):
        calls.append(state.sequences)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record(model, c, tmp_path / "cut.h5", opts, progress=stop_after_three, commit_seconds=0.0)
    partial = tmp_path / "cut.h5.partial"
    assert not (tmp_path / "cut.h5").exists()
    assert 0 < engine.load_trace(partial).n_sequences < calls[-1] + 1  # a valid trace of what was committed
    with pytest.raises(CorpusFileError, match="--resume"):
        record(model, c, tmp_path / "cut.h5", opts)
    with pytest.raises(CorpusFileError, match="seq_len differ"):
        record(model, c, tmp_path / "cut.h5", RecordOptions(probes=PROBES, seq_len=65, max_batch=2), resume=True)
    record(model, c, tmp_path / "cut.h5", opts, resume=True)
    assert_same_files(tmp_path / "whole.h5", tmp_path / "cut.h5")
    again = record(model, c, tmp_path / "cut.h5", opts, resume=True)
    assert again.notes == ["already complete: nothing to resume"]


KILLED_RUN = """
import sys, engine
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus
m = engine.load(sys.argv[1])
opts = RecordOptions(probes={probes!r}, seq_len=32, max_batch=1)
print("started", flush=True)
record(m, Corpus(sys.argv[2], glob="*.py"), sys.argv[3], opts, resume=True, commit_seconds=0.0)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_at_a_random_moment_then_resumed_equals_uninterrupted(tmp_path, corpus_dir, model, sig):
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(probes=PROBES))
    out = tmp_path / "k.h5"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), CHAR_LSTM, str(corpus_dir), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    while not Path(str(out) + ".partial").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.4))
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not out.exists()  # killed mid-run, not after finishing
    opts = RecordOptions(probes=PROBES, seq_len=32, max_batch=1)
    c = Corpus(corpus_dir, glob="*.py")
    if Path(str(out) + ".partial").exists():
        assert not journal_path(str(out) + ".partial").exists() or sig == signal.SIGKILL
    record(model, c, out, opts, resume=True)
    record(model, c, tmp_path / "whole.h5", opts)
    assert_same_files(tmp_path / "whole.h5", out)


def test_journal_keeps_the_last_commit(tmp_path):
    p = tmp_path / "j.bin"
    j = JournaledFile(p, create=True)
    j.write(b"A" * 100)
    j.commit()
    j.seek(10)
    j.write(b"B" * 10)  # inside the committed part: kept
    j.seek(100)
    j.write(b"C" * 5)  # past it: on disk, unreferenced
    j.seek(0)
    assert j.read(110)[8:22] == b"AABBBBBBBBBBAA"[:14]
    j.close()  # killed before the commit
    recover(p)
    assert p.read_bytes()[:100] == b"A" * 100
    j = JournaledFile(p, create=False)
    j.seek(10)
    j.write(b"B" * 10)
    j.truncate(50)
    j.commit()
    j.close()
    assert p.read_bytes() == b"A" * 10 + b"B" * 10 + b"A" * 30


def test_a_complete_journal_is_replayed_and_a_torn_one_dropped(tmp_path):
    p = tmp_path / "j.bin"
    j = JournaledFile(p, create=True)
    j.write(b"A" * 20)
    j.commit()
    j.seek(0)
    j.write(b"Z" * 4)
    # write the journal as commit() does, then die before applying it
    real_unlink = Path.unlink
    applied = []

    def die(self, *a, **k):
        if self.name.endswith(".journal"):
            raise SystemExit
        return real_unlink(self, *a, **k)

    Path.unlink = die
    try:
        j._to_disk = lambda data, off: applied.append(off)  # noqa: E731 - nothing reaches the file
        with pytest.raises(SystemExit):
            j.commit()
    finally:
        Path.unlink = real_unlink
    j.close()
    assert p.read_bytes() == b"A" * 20 and journal_path(p).exists()
    assert recover(p) and p.read_bytes() == b"ZZZZ" + b"A" * 16
    journal_path(p).write_bytes(b"SSJOURNAL1\n\x00\x00\x00")  # torn: never applied
    assert not recover(p) and p.read_bytes() == b"ZZZZ" + b"A" * 16 and not journal_path(p).exists()
