"""engine.corpus.scale_out: a 2-worker Ray recording equals the one-process recording exactly,
every reader sees one trace, and a killed worker loses no finished shard (resume redoes only
the missing ones).  Skipped where ray is not installed; one Ray session for the module."""
import os
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
from engine.corpus.scale_out import record_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAR_LSTM = str(ROOT / "assets/models/char-lstm-python")
PROBES = ["layers.0.c", "layers.1.h"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
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
