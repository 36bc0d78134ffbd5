"""A unit's strongest positions across a corpus, exact, with their context.

``top(corpus, probe, unit, k)`` returns the ``k`` tokens where the unit's value is largest
(``lowest=True``: smallest, i.e. most negative), best first.  Exact: every token of the corpus
is considered.  Ties: on equal values the smaller global position comes first, also for which
of several equal values make it into the ``k`` (the order of :mod:`engine.corpus.summary`).
Values are the stored values (float16 files: the float16 values) as float64; NaN and ±inf are
left out.

When the file has a ``/summary/<probe>/`` that covers every token (see
:class:`engine.corpus.reader.CorpusReader.summary`) and ``k`` is at most its ``k``, the answer
is read from it (a few hundred bytes); otherwise the unit's column is streamed in blocks and a
running best-``k`` is kept (memory: one block and ``k`` entries).  Both give the same answer.

Context of a hit: the ``left`` tokens before it and ``right`` after it, never crossing into the
neighbouring sequence, as text (``before``, ``token``, ``after``) for a text corpus, and the
unit's values over that window (``window``, from step ``window_start``); for a numeric corpus
the input rows of the window (``inputs``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .reader import CorpusQueryError, CorpusReader, opened

DEFAULT_K = 20
LEFT, RIGHT = 30, 10  # context tokens before / after a hit


@dataclass(frozen=True)
class Hit:
    rank: int
    position: int  # global token index
    sequence: int
    step: int  # index within the sequence
    value: float
    before: str | None = None
    token: str | None = None
    after: str | None = None
    window_start: int = 0  # step of window[0]
    window: list = field(default_factory=list)  # the unit's values over the context window
    inputs: list | None = None  # numeric corpora: the input rows of the window

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TopResult:
    probe: str
    unit: int
    lowest: bool
    hits: list
    from_summary: bool  # answered from /summary (else streamed)
    n_tokens: int

    def to_dict(self) -> dict:
        return {"probe": self.probe, "unit": self.unit, "lowest": self.lowest, "from_summary": self.from_summary,
                "n_tokens": self.n_tokens, "hits": [h.to_dict() for h in self.hits]}


def best_k(keys: np.ndarray, positions: np.ndarray, k: int):
    """The ``k`` entries with the largest keys, ties by smaller position; best first."""
    if len(keys) > k:
        kth = np.partition(keys, len(keys) - k)[len(keys) - k]
        sel = np.flatnonzero(keys >= kth)
        keys, positions = keys[sel], positions[sel]
    order = np.lexsort((positions, -keys))[:k]
    return keys[order], positions[order]


def stream_top(reader: CorpusReader, probe: str, unit: int, k: int, lowest: bool = False, progress=None,
               should_stop=None):
    """(positions, values) of the unit's ``k`` best tokens, by streaming its column."""
    keys = np.zeros(0)
    pos = np.zeros(0, np.int64)
    for start, block in reader.blocks(probe, units=[unit]):
        v = block[:, 0].astype(np.float64)
        ok = np.isfinite(v)
        p = np.flatnonzero(ok) + start
        bk = -v[ok] if lowest else v[ok]
        keys, pos = best_k(np.concatenate([keys, bk]), np.concatenate([pos, p]), k)
        if progress is not None:
            progress(start + len(block), reader.n_tokens)
        if should_stop is not None and should_stop():
            from ..errors import Cancelled
            raise Cancelled("the query was cancelled")
    return pos, (-keys if lowest else keys)


def summary_top(reader: CorpusReader, probe: str, unit: int, k: int, lowest: bool = False):
    """(positions, values) from the file's summary, or None when it cannot answer."""
    s = reader.summary(probe)
    if s is None or k > s.k:
        return None
    pos = (s.bottom_pos if lowest else s.top_pos)[unit, :k]
    val = (s.bottom_val if lowest else s.top_val)[unit, :k]
    keep = pos >= 0
    return pos[keep].astype(np.int64), val[keep].astype(np.float64)


def context(reader: CorpusReader, probe: str, unit: int, position: int, left: int = LEFT, right: int = RIGHT):
    """The context of one token: dict of Hit fields other than rank/value."""
    seq, step = (int(x[0]) for x in reader.locate([position]))
    s0, s1 = int(reader.offsets[seq]), int(reader.offsets[seq + 1])
    a, b = max(s0, position - left), min(s1, position + right + 1)
    out = {"position": int(position), "sequence": seq, "step": step, "window_start": a - s0,
           "window": [float(x) for x in reader.rows(probe, a, b, [unit])[:, 0]]}
    texts = reader.texts(a, b)
    if texts is not None:
        i = position - a
        out.update(before="".join(texts[:i]), token=texts[i], after="".join(texts[i + 1:]))
    inputs = reader.inputs(a, b)
    if inputs is not None:
        out["inputs"] = inputs.astype(float).tolist()
    return out


def top(corpus, probe: str, unit: int, k: int = DEFAULT_K, *, lowest: bool = False, left: int = LEFT,
        right: int = RIGHT, use_summary: bool = True, progress=None, should_stop=None) -> TopResult:
    """The unit's ``k`` strongest tokens across the corpus (see the module doc).  ``corpus``: a
    path or an open :class:`CorpusReader`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CorpusQueryError(f"-k must be a positive number of positions, got {k!r}")
    with opened(corpus) as reader:
        unit = reader.check_unit(probe, unit)
        found = summary_top(reader, probe, unit, int(k), lowest) if use_summary else None
        from_summary = found is not None
        if found is None:
            found = stream_top(reader, probe, unit, int(k), lowest, progress, should_stop)
        hits = [Hit(rank=r + 1, value=float(v), **context(reader, probe, unit, int(p), left, right))
                for r, (p, v) in enumerate(zip(*found))]
        return TopResult(probe, unit, bool(lowest), hits, from_summary, reader.n_tokens)


__all__ = ["top", "TopResult", "Hit", "best_k", "stream_top", "summary_top", "context", "DEFAULT_K"]
