"""Corpus recording on Ray workers (DESIGN.md §6).  The only module of SeqScope that imports ``ray``.

``record_ray(model_path, corpus, "corpus.h5", options, workers=N)`` starts a local Ray
instance with N CPUs (or joins ``address``), and one actor per worker that loads the model
(one GPU each where the cluster has GPUs).  The driver reads the corpus, cuts its numbered
sequences into order-stable shards of ``options.shard_sequences`` sequences (shard ``k`` holds
sequences ``k*S .. (k+1)*S - 1``), and hands shards to idle actors.  Each actor records its
shard with the one-process recorder's code and batches (:func:`engine.corpus.record.record_sequences`)
into ``corpus.h5.shards/NNNN.h5.partial`` and renames it to ``NNNN.h5`` when complete, so a
shard file is either complete or absent.  When every shard is done the driver writes
``corpus.h5``, stitching the shards with virtual datasets and merging their summaries
(:mod:`engine.corpus.stitch`).  The result holds exactly the arrays of a one-process run: the
same sequences in the same batches through the same model.

Failures: if an actor dies or a shard fails, the driver lets the shards in flight finish, keeps
every finished shard, and stops with one sentence; ``resume=True`` redoes only the shards whose
file is missing (a ``.partial`` left by a dead worker is discarded).  Ctrl-C stops the workers at
once; finished shards are kept the same way.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import SeqScopeError
from ..interrupts import held_signals
from .record import CorpusProgress, RecordOptions, RecordResult, corpus_size_hint, resolve_probes
from .sources import Corpus, sequences
from .tracefile import CorpusFileError, read_progress
from .vds import shards_folder

IN_FLIGHT_PER_WORKER = 2  # shards queued per actor: bounded driver memory, no idle gaps


class RayUnavailable(SeqScopeError):
    """Ray is needed (``--workers``/``--ray-address``) but not installed or not reachable."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("recording with --workers or --ray-address needs Ray: pip install 'seqscope[cluster]' "
                             "(or record in one process without those options)") from None
    return ray


def shard_name(k: int) -> str:
    return f"{k:04d}.h5"


def _load(model_path, config, device):
    from .. import load

    return load(model_path, **({"config": config} if config else {}), device=device)


class ShardWorker:
    """The actor: holds one model and records shards with it."""

    def __init__(self, model_path, config, device):
        import torch

        if os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        self.model = _load(model_path, config, device)

    def record_shard(self, path: str, seqs: list, opts: RecordOptions, options: dict, first_sequence: int) -> tuple:
        from .record import open_output, record_sequences

        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        specs = resolve_probes(self.model, opts.probes)
        out = open_output(partial, self.model, specs, opts, options, resume=False, first_sequence=first_sequence)
        try:
            record_sequences(out, self.model, seqs, [s.name for s in specs], opts, check=lambda: None,
                             commit_seconds=float("inf"))
            out.commit(complete=True)
            done = (out.sequences_done, out.tokens_done)
        finally:
            out.close()
        os.replace(partial, path)
        return done


def _shard_done(path: Path, options: dict, first_sequence: int) -> bool:
    """A finished shard of this very recording?"""
    if not path.exists():
        return False
    try:
        info = read_progress(path) or {}
    except OSError:
        return False
    return bool(info.get("complete")) and int(info.get("first_sequence", -1)) == first_sequence \
        and json.loads(info.get("options", "null")) == json.loads(json.dumps(options, sort_keys=True))


def _shards(seqs, size: int):
    """(shard number, its sequences) in order."""
    batch, k = [], None
    for s in seqs:
        if k is not None and s.index // size != k:
            yield k, batch
            batch = []
        k = s.index // size
        batch.append(s)
    if batch:
        yield k, batch


def record_ray(model_path, corpus: Corpus, output, opts: RecordOptions | None = None, *, workers: int | None = None,
               address: str | None = None, resume: bool = False, progress=None, config=None,
               device: str | None = None) -> RecordResult:
    """Record ``corpus`` with Ray workers into ``output`` (see the module doc)."""
    import h5py

    from ..atomic import writable_target
    from .stitch import stitch

    ray = _ray()
    opts = opts or RecordOptions()
    target = writable_target(Path(output), "corpus trace", CorpusFileError)
    folder = shards_folder(target)
    if resume and target.exists():
        info = read_progress(target)
        if info is not None and info.get("complete"):
            return RecordResult(target, int(info["sequences_done"]), int(info["tokens_done"]), 0.0, True,
                                ["already complete: nothing to resume"])
    if folder.exists() and not resume:
        raise CorpusFileError(f"{folder.name} is left from an earlier recording: add --resume to continue it, or "
                              f"delete it to start over")
    local = model_path if not os.path.exists(model_path) else os.path.abspath(model_path)
    model = _load(local, config, "cpu")  # the driver only tokenizes
    specs = resolve_probes(model, opts.probes)
    options = opts.fingerprint(corpus, model, [s.name for s in specs])
    folder.mkdir(exist_ok=True)
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": workers or 1}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        except Exception as exc:  # ray's own errors about addresses and clusters
            raise RayUnavailable(f"cannot start or reach Ray: {str(exc).splitlines()[0][:200]}") from None
    t0 = time.monotonic()
    try:
        n = workers or max(1, int(ray.cluster_resources().get("GPU" if device != "cpu" else "CPU", 1)))
        gpus = 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= n else 0
        actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(ShardWorker)
        actors = [actor_cls.remote(local, config, device if gpus else "cpu") for _ in range(n)]
        state = CorpusProgress(corpus_size_hint(corpus) if opts.max_tokens is None else opts.max_tokens)
        state.actors = actors
        paths = _run_shards(ray, actors, model, corpus, folder, opts, options, state, progress, resume)
        stitch(target, paths, options)
        info = read_progress(target)
        with h5py.File(target, "r") as f:
            notes = json.loads(f.attrs["notes"])
        return RecordResult(target, int(info["sequences_done"]), int(info["tokens_done"]), time.monotonic() - t0,
                            True, notes)
    finally:
        if started_here:
            ray.shutdown()


def _run_shards(ray, actors, model, corpus, folder: Path, opts, options, state, progress, resume) -> list[Path]:
    """Hand out the shards, keep what finishes, stop cleanly on the first failure."""
    paths: list[Path] = []
    pending: dict = {}  # object ref -> (shard number, actor index, sequences, tokens)
    load = [0] * len(actors)
    failure = None
    seqs = sequences(corpus, model, seq_len=opts.seq_len, max_tokens=opts.max_tokens)

    def collect(timeout):
        nonlocal failure
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        for ref in ready:
            k, a, n_seq, n_tok = pending.pop(ref)
            load[a] -= 1
            try:
                ray.get(ref)
            except Exception as exc:  # the actor died, or its shard raised
                failure = failure or (k, str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__)
                continue
            state.sequences += n_seq
            state.tokens += n_tok
            state.consumed += n_tok
            if progress is not None:
                progress(state)

    with held_signals() as check:
        try:
            for k, batch in _shards(seqs, opts.shard_sequences):
                path = folder / shard_name(k)
                paths.append(path)
                if resume and _shard_done(path, options, batch[0].index):
                    state.sequences += len(batch)
                    state.tokens += sum(len(s) for s in batch)
                    continue
                path.unlink(missing_ok=True)
                while failure is None and min(load) >= IN_FLIGHT_PER_WORKER:
                    check()
                    collect(0.5)
                if failure is not None:
                    break
                a = load.index(min(load))
                ref = actors[a].record_shard.remote(str(path), batch, opts, options, batch[0].index)
                pending[ref] = (k, a, len(batch), sum(len(s) for s in batch))
                load[a] += 1
                check()
            while pending:
                check()
                collect(0.5)
        except KeyboardInterrupt:  # stop now: finished shards stay, the ones in flight are dropped
            for actor in actors:
                ray.kill(actor)
            raise
    if failure is not None:
        done = sum(1 for p in paths if p.exists())
        raise CorpusFileError(f"a worker failed on shard {failure[0]} ({failure[1]}); the {done} finished shard(s) "
                              f"are kept in {folder.name}: run again with --resume to redo the rest")
    return paths


__all__ = ["record_ray", "RayUnavailable", "ShardWorker", "shard_name"]
