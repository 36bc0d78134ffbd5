"""Recording a model over a whole corpus, streaming, into one corpus trace file.

``record(model, corpus, "corpus.h5", options)`` runs the model over the corpus's numbered
sequences (:func:`engine.corpus.sources.sequences`) batch by batch and appends each batch to
``corpus.h5.partial`` (:class:`engine.corpus.tracefile.CorpusFile`): probe arrays in the stored
dtype, token ids and texts, offsets, names, and the per-unit summaries.  When the corpus is done
the partial file is renamed to ``corpus.h5``; an older ``corpus.h5`` is untouched until then.

Batches are fixed by the sequence numbers alone: consecutive sequences, never across a shard
boundary (every ``shard_sequences`` sequences), as many as fit ``batch_tokens`` (padded: count x
longest) and ``max_batch``.  A resumed run and a Ray worker (:mod:`engine.corpus.scale_out`)
therefore cut exactly the same batches, and a model gives the same bits for the same batch.

Interruption: Ctrl-C and SIGTERM are held while a batch runs (:mod:`engine.interrupts`); the
batches done are committed and the partial file closed, a valid trace of the sequences done
(every reader opens it); ``resume=True`` carries on from there and gives the same file as an
uninterrupted run.  A kill that cannot be caught (SIGKILL, a power cut) loses at most the batches
since the last commit (one every ``commit_seconds``): the journal keeps the file at that commit.

Pipelining: a thread reads and tokenizes the corpus ahead, the main thread runs the model, a writer
thread appends the previous batch (and the probes' summaries are computed in parallel with HDF5's
writes), so the model rarely waits on the disk.

Memory: two batches of arrays (one being computed, one being written), the summaries (units x
(4k + bins) x 8 bytes per probe), HDF5's chunk caches (32 MB per dataset at most) and the
sequences read ahead; never the corpus.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import Cancelled, SeqScopeError
from ..interrupts import held_signals
from .sources import Corpus, Sequence, sequences
from .heap import release_free_memory
from .summary import DEFAULT_BINS, DEFAULT_K
from .tracefile import CorpusFile, CorpusFileError, NotARecordingInProgress, read_progress

PARTIAL_SUFFIX = ".partial"


@dataclass
class RecordOptions:
    probes: list = field(default_factory=lambda: ["*"])  # globs
    dtype: str = "float32"  # stored precision: float16, float32, float64
    compression: str | None = None  # None, "gzip", "lzf"
    seq_len: int | None = None  # cut longer sequences into pieces of this many tokens
    max_tokens: int | None = None  # stop after this many tokens
    batch_tokens: int = 32768  # padded tokens per batch (count x longest)
    max_batch: int = 64  # sequences per batch
    shard_sequences: int = 256  # batches never cross a multiple of this (Ray shards are made of them)
    k: int = DEFAULT_K
    bins: int = DEFAULT_BINS
    chunk: int = 256  # engine.run's chunk

    def fingerprint(self, corpus: Corpus, model, names: list[str]) -> dict:
        """What a resumed run must share with the run it continues."""
        d = asdict(self)
        source = str(model.info().get("source", ""))
        d.update(probes=names, corpus=corpus.describe(), model=os.path.abspath(source) if source else "",
                 parameters=int(model.info().get("parameter_count", 0) or 0))
        return d


@dataclass
class RecordResult:
    path: Path
    sequences: int
    tokens: int
    seconds: float
    complete: bool
    notes: list = field(default_factory=list)


class CorpusProgress:
    """What a progress display gets after each batch."""

    def __init__(self, total_hint: int | None):
        self.total_hint = total_hint  # characters or steps in the corpus (an estimate), or None
        self.tokens = self.sequences = self.consumed = 0
        self.start = time.monotonic()
        self.tokens_at_start = 0

    @property
    def rate(self) -> float:
        dt = time.monotonic() - self.start
        return (self.tokens - self.tokens_at_start) / dt if dt > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        if not self.total_hint:
            return None
        return min(0.999, self.consumed / self.total_hint)

    @property
    def seconds_left(self) -> float | None:
        frac, rate = self.fraction, self.rate
        if frac is None or rate <= 0 or self.consumed <= 0 or self.tokens <= self.tokens_at_start:
            return None
        tokens_total = self.tokens / frac
        return max(0.0, (tokens_total - self.tokens) / rate)


def batches(seqs: Iterable[Sequence], opts: RecordOptions) -> Iterator[list[Sequence]]:
    """Cut numbered sequences into batches (see the module doc): a function of the numbers only."""
    batch: list[Sequence] = []
    longest = 0
    for s in seqs:
        new_longest = max(longest, len(s))
        if batch and (s.index % opts.shard_sequences == 0 or len(batch) >= opts.max_batch
                      or (len(batch) + 1) * new_longest > opts.batch_tokens):
            yield batch
            batch, new_longest = [], len(s)
        batch.append(s)
        longest = new_longest
    if batch:
        yield batch


def resolve_probes(model, globs) -> list:
    """The ProbeSpecs matching ``globs``, in the model's order."""
    from ..probes import match_probes

    table = {s.name: s for s in model.probe_specs()}
    try:
        names = match_probes(globs, list(table))
    except KeyError as exc:
        raise SeqScopeError(str(exc.args[0])) from None
    return [table[n] for n in names]


def run_batch(model, batch: list[Sequence], names: list[str], opts: RecordOptions, should_stop=None):
    """The model on one batch: {probe: [tokens, ...] in the stored dtype}, numeric inputs or None.

    The model's own forward pass, as :func:`engine.run` calls it (same padded batch, same call:
    the same bits), without what a corpus does not need from ``run()``: token texts looked up
    per id, a Trace, a separate scan for non-finite values (the summaries count them).  Each
    sequence's rows are copied out of the padded batch and cast to the stored dtype in one step."""
    import torch

    from ..run import _exact_cuda, padded_inputs

    lengths = [len(s) for s in batch]
    x = padded_inputs(model, batch)
    plan = model.bind((), lengths, {})
    with torch.no_grad(), _exact_cuda(model.device):
        out = model.forward(x, lengths, set(names), plan, chunk=opts.chunk, should_stop=should_stop)
    dtype = getattr(torch, opts.dtype)
    n = sum(lengths)
    arrays = {}
    for name in names:
        t = out[name]
        dst = torch.empty((n,) + tuple(t.shape[2:]), dtype=dtype)
        at = 0
        for b, L in enumerate(lengths):
            dst[at:at + L].copy_(t[:L, b])
            at += L
        arrays[name] = dst.numpy()
    values = None if model.takes_tokens else np.concatenate([s.values for s in batch]).astype(np.float32)
    return arrays, values


def text_kind(model) -> str | None:
    if not model.takes_tokens:
        return None
    from ..tokenizers import CharVocab

    return "fixed" if isinstance(model.tokenizer, CharVocab) else "vlen"


def open_output(partial: Path, model, specs, opts: RecordOptions, fingerprint: dict, resume: bool,
                first_sequence: int = 0) -> CorpusFile:
    """The partial file to grow: continued when ``resume`` and it exists, otherwise new."""
    if partial.exists():
        if not resume:
            raise CorpusFileError(f"{partial.name} is left from an earlier, unfinished recording: add --resume to "
                                  f"continue it, or delete it to start over")
        try:
            return CorpusFile.reopen(partial, fingerprint)
        except NotARecordingInProgress:
            # killed before its first commit: nothing was recorded; the unreadable file is kept
            # aside (never deleted) and the recording starts over
            os.replace(partial, partial.with_name(partial.name + ".unreadable"))
    return CorpusFile.create(partial, model_info=model.info(), specs=specs, dtype=opts.dtype,
                             compression=opts.compression, text_kind=text_kind(model),
                             features=None if model.takes_tokens else model.input_size, options=fingerprint,
                             k=opts.k, bins=opts.bins, first_sequence=first_sequence)


def record_sequences(out: CorpusFile, model, seqs: Iterable[Sequence], names: list[str], opts: RecordOptions, *,
                     check: Callable[[], None], commit_seconds: float = 1.0,
                     on_batch: Callable[[list[Sequence]], None] | None = None) -> None:
    """Run and append batch after batch, committing every ``commit_seconds`` and at the end.

    A writer thread appends (casts, writes, summarises) one batch while the model runs the next
    (torch and the summary kernel release the GIL).  ``check()`` raises for a held-back signal;
    then the batch being written is finished and the batches done are committed first.  After a
    failed write nothing more is committed (the file keeps its last commit)."""
    from concurrent.futures import ThreadPoolExecutor

    stop_flag = []
    last = [time.monotonic()]

    def should_stop() -> bool:
        try:
            check()
        except BaseException:
            stop_flag.append(True)
            return True
        return False

    def write(batch, arrays, values):
        out.append(batch, arrays, values)
        release_free_memory()  # else glibc keeps the freed batches: RSS would creep with the corpus
        if time.monotonic() - last[0] >= commit_seconds:
            out.commit()
            last[0] = time.monotonic()

    pending, written = None, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-writer") as writer:
        try:
            for batch in batches(seqs, opts):
                check()
                arrays, values = run_batch(model, batch, names, opts, should_stop)
                if pending is not None:
                    pending.result()
                    if on_batch is not None:
                        on_batch(written)
                pending, written = writer.submit(write, batch, arrays, values), batch
            if pending is not None:
                pending.result()
                if on_batch is not None:
                    on_batch(written)
        except (Cancelled, KeyboardInterrupt):
            whole = True
            if pending is not None:
                try:
                    pending.result()
                except BaseException:
                    whole = False
            if whole:
                out.commit()
            if stop_flag:
                check()
            raise


def prefetched(items: Iterable, depth: int) -> Iterator:
    """``items`` read ahead by a thread (at most ``depth`` waiting), so that reading and tokenizing
    the corpus overlap the model; its exceptions come out here, in order.  Closing the generator
    stops the thread."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as exc:  # handed to the consumer
            put((exc, None))

    thread = threading.Thread(target=produce, name="corpus-reader", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def corpus_size_hint(corpus: Corpus) -> int | None:
    """About how many characters (or steps) the corpus holds, for the time left."""
    try:
        if corpus.kind == "folder":
            return sum(p.stat().st_size for p in corpus._files(corpus.glob or "*"))
        if corpus.kind == "numeric":
            return None
        return os.path.getsize(corpus.path)
    except OSError:
        return None


def record(model, corpus: Corpus, output, opts: RecordOptions | None = None, *, resume: bool = False,
           progress: Callable[[CorpusProgress], None] | None = None, commit_seconds: float = 1.0) -> RecordResult:
    """Record ``model`` over ``corpus`` into the corpus trace ``output`` (see the module doc)."""
    from ..atomic import writable_target

    opts = opts or RecordOptions()
    output = Path(output)
    target = writable_target(output, "corpus trace", CorpusFileError)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    specs = resolve_probes(model, opts.probes)
    names = [s.name for s in specs]
    fingerprint = opts.fingerprint(corpus, model, names)
    if resume and not partial.exists() and target.exists():
        info = read_progress(target)
        if info is not None and info.get("complete"):
            return RecordResult(target, int(info["sequences_done"]), int(info["tokens_done"]), 0.0, True,
                                ["already complete: nothing to resume"])
    t0 = time.monotonic()
    state = CorpusProgress(corpus_size_hint(corpus) if opts.max_tokens is None else opts.max_tokens)
    with held_signals() as check:
        out = open_output(partial, model, specs, opts, fingerprint, resume)
        seqs = None
        try:
            state.tokens = state.tokens_at_start = state.consumed = out.tokens_done
            state.sequences = out.sequences_done
            seqs = prefetched(sequences(corpus, model, seq_len=opts.seq_len, max_tokens=opts.max_tokens,
                                        start=out.sequences_done), 2 * opts.max_batch)

            def on_batch(batch):
                state.sequences += len(batch)
                n = sum(len(s) for s in batch)
                state.tokens += n
                state.consumed += n if opts.max_tokens is not None or not model.takes_tokens else \
                    sum(len(p) for s in batch for p in s.pieces)
                if progress is not None:
                    progress(state)

            record_sequences(out, model, seqs, names, opts, check=check, commit_seconds=commit_seconds,
                             on_batch=on_batch)
            empty = out.sequences_done == 0
            out.commit(complete=True)
            result = RecordResult(target, out.sequences_done, out.tokens_done, time.monotonic() - t0, True,
                                  json.loads(out.f.attrs["notes"]))
        finally:
            if seqs is not None:
                seqs.close()
            out.close()
        if empty:
            partial.unlink()
            raise CorpusFileError(f"the corpus {corpus.path.name} holds nothing to run (every document is empty)")
        os.replace(partial, target)
    return result


__all__ = ["record", "RecordOptions", "RecordResult", "CorpusProgress", "batches", "PARTIAL_SUFFIX"]
