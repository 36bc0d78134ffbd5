"""seqscope trace --corpus: the command line records, refuses what does not apply in one sentence,
says how to resume after Ctrl-C; numeric corpora record their inputs."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.cli import main
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus

ROOT = Path(__file__).resolve().parents[1]
CHAR_LSTM = str(ROOT / "assets/models/char-lstm-python")
TIMESERIES = str(ROOT / "assets/models/lstm-timeseries")


@pytest.fixture
def corpus_file(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("def f(x):\n    return 'a'\n\n" * 40)
    return p


def test_cli_records_a_split_text_file(tmp_path, corpus_file, capsys):
    out = tmp_path / "c.h5"
    assert main(["trace", CHAR_LSTM, "--corpus", str(corpus_file), "--split", "line", "--probes", "layers.1.h",
                 "--max-tokens", "300", "-o", str(out)]) == 0
    trace = engine.load_trace(out)
    assert trace.n_tokens == 300 and trace.text(0) == "def f(x):\n"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--text", "hi", "--seq-len", "3"], "--seq-len applies only to a corpus recording"),
    (["--corpus", "CORPUS", "--intervene", '{"probe": "layers.0.c", "op": "zero"}'], "--intervene does not apply"),
    (["--corpus", "CORPUS", "--max-memory", "1G"], "--max-memory does not apply"),
    (["--corpus", "CORPUS", "--glob", "*.py"], "--glob applies to a folder corpus"),
    (["--corpus", "CORPUS", "--top-k", "0"], "--top-k must be at least 1"),
])
def test_cli_refuses_what_does_not_apply(tmp_path, corpus_file, capsys, argv, message):
    argv = [str(corpus_file) if a == "CORPUS" else a for a in argv]
    assert main(["trace", CHAR_LSTM, *argv, "-o", str(tmp_path / "x.h5")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_ctrl_c_says_how_to_resume(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(30):
        (src / f"f{k:02d}.py").write_text("x = [1, 2, 3]\n" * 20)
    out = tmp_path / "c.h5"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "trace", CHAR_LSTM, "--corpus", str(src),
                             "--probes", "layers.0.c", "--seq-len", "16", "-o", str(out)],
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not Path(str(out) + ".partial").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "are recorded in c.h5.partial, a valid trace; run the same command with --resume" in err
    assert engine.load_trace(Path(str(out) + ".partial")).n_sequences > 0 and not out.exists()


def test_numeric_corpus_records_inputs(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((3, 40, 3)).astype(np.float32)
    np.save(tmp_path / "s.npy", stack)
    model = engine.load(TIMESERIES)
    record(model, Corpus(tmp_path / "s.npy"), tmp_path / "n.h5", RecordOptions(probes=["layers.0.h"], seq_len=25))
    trace = engine.load_trace(tmp_path / "n.h5")
    assert trace.token_text is None and trace.n_sequences == 6
    np.testing.assert_array_equal(trace.inputs, stack.reshape(-1, 3))
    alone = engine.run(model, stack[1, 25:], probes=["layers.0.h"])
    np.testing.assert_allclose(trace.array("layers.0.h", 3), alone.arrays["layers.0.h"], atol=1e-5, rtol=0)
