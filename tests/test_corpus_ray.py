"""engine.corpus.scale_out: a 2-worker Ray recording equals the one-process recording exactly,
every reader sees one trace, and a killed worker loses no finished shard (resume redoes only
the missing ones).  Skipped where ray is not installed; one Ray session for the module."""
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

import engine
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus
from engine.corpus.tracefile import CorpusFileError
from engine.hdf5_read import TraceLoadError

ray = pytest.importorskip("ray")
from engine.corpus.scale_out import init_ray, record_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAR_LSTM = str(ROOT / "assets/models/char-lstm-python")
PROBES = ["layers.0.c", "layers.1.h"]


HANDLERS_BEFORE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    HANDLERS_BEFORE.update({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)})
    init_ray(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    for k, p in enumerate(sorted((ROOT / CHAR_LSTM / "heldout").glob("*.py"))[:3]):
        (folder / f"f{k}.py").write_text(p.read_text()[:900])
    return Corpus(folder, glob="*.py")


OPTS = RecordOptions(probes=PROBES, dtype="float16", seq_len=100, shard_sequences=4, max_batch=2, k=8)


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "one.h5"
    record(engine.load(CHAR_LSTM), corpus, path, OPTS)
    return path


def same_as_one_process(path, one):
    with h5py.File(path, "r") as fa, h5py.File(one, "r") as fb:
        names = []
        fb.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for name in names:
            a, b = fa[name][()], fb[name][()]
            if name.endswith(("/mean", "/m2")):  # merged per shard: float64 rounding
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
        assert fa["probes/layers.0.c"].is_virtual and fa.attrs["format"] == "seqscope-trace"


def test_two_workers_equal_one_process_and_every_reader_sees_one_trace(corpus, one_process, tmp_path):
    out = tmp_path / "ray.h5"
    result = record_ray(CHAR_LSTM, corpus, out, OPTS, workers=2)
    assert result.complete and len(list((tmp_path / "ray.h5.shards").glob("*.h5"))) > 2
    same_as_one_process(out, one_process)
    a, b = engine.load_trace(out), engine.load_trace(one_process)
    assert a.token_text == b.token_text and np.array_equal(a.arrays["layers.1.h"], b.arrays["layers.1.h"])
    # moved with its shard folder, it still reads; without a shard it is refused, not blank
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(out, moved / "c.h5")
    os.rename(tmp_path / "ray.h5.shards", moved / "ray.h5.shards")
    assert engine.load_trace(moved / "c.h5").n_tokens == a.n_tokens
    (moved / "ray.h5.shards" / "0001.h5").unlink()
    with pytest.raises(TraceLoadError, match="0001.h5, which is missing"):
        engine.load_trace(moved / "c.h5")


def test_a_killed_worker_loses_no_finished_shard_and_resume_redoes_only_the_rest(corpus, one_process, tmp_path):
    out = tmp_path / "k.h5"
    killed = []

    def kill_one(state):  # after the first finished shard, kill one worker
        if not killed:
            killed.append(True)
            ray.kill(state.actors[1])

    with pytest.raises(CorpusFileError, match="finished shard"):
        record_ray(CHAR_LSTM, corpus, out, OPTS, workers=2, progress=kill_one)
    folder = tmp_path / "k.h5.shards"
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")}
    assert kept and not out.exists()
    with pytest.raises(CorpusFileError, match="--resume"):
        record_ray(CHAR_LSTM, corpus, out, OPTS, workers=2)
    record_ray(CHAR_LSTM, corpus, out, OPTS, workers=2, resume=True)
    assert all(folder.joinpath(name).stat().st_mtime_ns == t for name, t in kept.items())  # not redone
    same_as_one_process(out, one_process)


def test_starting_ray_leaves_the_signal_handlers_as_they_were():
    """Ray's driver installs a SIGTERM handler of its own; SeqScope's Ctrl-C/SIGTERM handling
    (engine.interrupts) must stay in charge, during the run and after it."""
    assert HANDLERS_BEFORE and all(signal.getsignal(sig) == h for sig, h in HANDLERS_BEFORE.items())


def test_the_command_line_records_on_an_existing_cluster(corpus, one_process, tmp_path):
    """``seqscope trace --corpus … --ray-address ADDRESS``: a second driver (a new process) joins
    the Ray cluster this module started, its workers record the shards, and the stitched file
    holds the one-process arrays (the command line batches differently: float16 values within
    one step of their resolution, every token and offset exact)."""
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "cluster.h5"
    cmd = [sys.executable, "-m", "engine.cli", "trace", CHAR_LSTM, "--corpus", str(corpus.path), "--glob", "*.py",
           "--probes", *PROBES, "--dtype", "float16", "--seq-len", "100", "--top-k", "8", "--no-progress",
           "--ray-address", address, "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    a, b = engine.load_trace(out), engine.load_trace(one_process)
    assert a.token_text == b.token_text and np.array_equal(a.offsets, b.offsets)
    for probe in PROBES:
        np.testing.assert_allclose(np.asarray(a.arrays[probe], np.float32), np.asarray(b.arrays[probe], np.float32),
                                   atol=2e-3, rtol=2e-3, err_msg=probe)
    with h5py.File(out, "r") as f:
        assert f["probes/layers.0.c"].is_virtual  # shards stitched into one trace
