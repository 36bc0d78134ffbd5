"""LSTMVis's select-and-match, exact over a whole corpus.

``match(corpus, probe, sequence, (a, b), threshold)``:

1. **Selection.**  A unit is *on* at a step when its stored value is ``>= threshold`` (compared
   in float64; NaN is off).  The selected units are those on at every step ``a .. b-1`` of the
   sequence; with ``off_before`` also off at step ``a-1``, with ``off_after`` also off at step
   ``b``.  The start and the end of a sequence count as off (nothing is on outside it).
2. **Candidates**, as LSTMVis's ``query_similar_activations`` makes them: with ``count_t`` the
   number of selected units on at token t, for each level n from the number of selected units
   down to 1, every maximal run of tokens with ``count_t >= n`` of length >= ``min_length``
   (LSTMVis: 2) is a candidate span.  Runs never cross a sequence boundary (LSTMVis reads one
   concatenated sequence; see the tests for what that changes).  A span found at several levels
   is one candidate.
3. **Scores**, as LSTMVis scores them: the span's *active* units are all units of the probe on
   at every step of the span (and, with ``off_before``/``off_after``, off just before / after it;
   a sequence edge counts as off).  ``intersection`` = active units among the selected ones,
   ``union`` = active units together with the selected ones.
4. **Ranking**, as LSTMVis ranks: largest intersection, then smallest union, then longest span;
   then (where LSTMVis leaves the order to chance) smaller position.

Exact: every candidate of the corpus is considered (LSTMVis's fast mode reads the first 500,000
steps and keeps 1,000 candidates).  Levels are taken from the top down and stop once ``limit``
spans are found whose intersection no candidate of a lower level can reach (a span found at
level n has an intersection of at most n), so asking for the best 50 rarely scores more than the
top level.  ``limit=None`` scores every candidate.

Cost: one pass over the selected units' columns (the chunk columns holding them) to count, and
reads of all units over the rows of the candidates scored (grouped into ranges).  Memory: two
bytes per token for the counts, and one range of rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import Cancelled
from .reader import CorpusQueryError, CorpusReader, opened

DEFAULT_THRESHOLD = 0.3
DEFAULT_LIMIT = 50
MIN_LENGTH = 2  # LSTMVis's cut_off
RANGE_ROWS = 16384  # rows of all units read at once when scoring candidates
CONTEXT = 10  # tokens of text shown before and after a span
MAX_SPAN_TEXT = 200


@dataclass(frozen=True)
class Span:
    rank: int
    position: int  # global token index of the span's first token
    length: int
    sequence: int
    step: int
    intersection: int
    union: int
    contains_selection: bool = False
    before: str | None = None
    text: str | None = None
    after: str | None = None

    def key(self) -> tuple:
        return (-self.intersection, self.union, -self.length, self.position)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MatchResult:
    probe: str
    sequence: int
    span: tuple
    threshold: float
    off_before: bool
    off_after: bool
    units: list  # the selected units
    spans: list
    candidates: int  # candidates scored
    levels: int  # levels of the count examined

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("probe", "sequence", "threshold", "off_before", "off_after", "units",
                                           "candidates", "levels")}
        d["span"] = list(self.span)
        d["spans"] = [s.to_dict() for s in self.spans]
        return d


def _on(values: np.ndarray, threshold: float) -> np.ndarray:
    return np.greater_equal(values, np.float64(threshold))  # float64 comparison, NaN is off


def units_on(window: np.ndarray, threshold: float, before: np.ndarray | None = None,
             after: np.ndarray | None = None) -> np.ndarray:
    """The units (columns of ``window`` [steps, units]) on at every step, and off in the rows
    ``before`` / ``after`` when given (None: a sequence edge, which counts as off)."""
    sel = _on(window, threshold).all(axis=0)
    if before is not None:
        sel &= ~_on(before, threshold)
    if after is not None:
        sel &= ~_on(after, threshold)
    return np.flatnonzero(sel)


def selected_units(reader: CorpusReader, probe: str, sequence: int, a: int, b: int, threshold: float,
                   off_before: bool = False, off_after: bool = False) -> np.ndarray:
    """The units on over steps ``a:b`` of ``sequence`` (and off around it when asked)."""
    s0, s1 = int(reader.offsets[sequence]), int(reader.offsets[sequence + 1])
    before = reader.rows(probe, s0 + a - 1, s0 + a)[0] if off_before and a > 0 else None
    after = reader.rows(probe, s0 + b, s0 + b + 1)[0] if off_after and s0 + b < s1 else None
    return units_on(reader.rows(probe, s0 + a, s0 + b), threshold, before, after)


def unit_counts(reader: CorpusReader, probe: str, units: np.ndarray, threshold: float, progress=None,
                should_stop=None) -> np.ndarray:
    """For every token, how many of ``units`` are on."""
    from .chunk_scan import count_on

    dtype = np.uint16 if len(units) < 2 ** 16 else np.uint32
    counts = np.zeros(reader.n_tokens, dtype)
    if count_on(reader.path, reader.probe(probe), units, threshold, counts):  # the file's chunks, in place
        if progress is not None:
            progress(reader.n_tokens, reader.n_tokens)
        return counts
    for start, block in reader.blocks(probe, units=units):
        counts[start:start + len(block)] = _on(block, threshold).sum(axis=1, dtype=dtype)
        if progress is not None:
            progress(start + len(block), reader.n_tokens)
        if should_stop is not None and should_stop():
            raise Cancelled("the query was cancelled")
    return counts


def runs_at_level(counts: np.ndarray, level: int, offsets: np.ndarray, min_length: int):
    """(starts, ends) of the maximal runs with ``counts >= level`` inside sequences."""
    mask = counts >= level
    edges = np.flatnonzero(np.diff(mask.view(np.int8), prepend=0, append=0))
    starts, ends = edges[0::2], edges[1::2]
    # split runs at sequence boundaries
    lo = np.searchsorted(offsets, starts, side="right")
    hi = np.searchsorted(offsets, ends, side="left")
    crossing = np.flatnonzero(hi > lo)
    if len(crossing):
        extra_s, extra_e = [], []
        for i in crossing:
            cuts = offsets[lo[i]:hi[i]]
            bounds = np.concatenate([[starts[i]], cuts, [ends[i]]])
            extra_s.append(bounds[:-1])
            extra_e.append(bounds[1:])
        keep = np.ones(len(starts), bool)
        keep[crossing] = False
        starts = np.concatenate([starts[keep]] + extra_s)
        ends = np.concatenate([ends[keep]] + extra_e)
    long_enough = ends - starts >= min_length
    return starts[long_enough].astype(np.int64), ends[long_enough].astype(np.int64)


def score_spans(reader: CorpusReader, probe: str, starts: np.ndarray, ends: np.ndarray, selected: np.ndarray,
                threshold: float, off_before: bool, off_after: bool, should_stop=None):
    """(intersection, union) of each span (see the module doc), reading rows in ranges."""
    n_units = reader.n_units(probe)
    is_sel = np.zeros(n_units, bool)
    is_sel[selected] = True
    inter = np.zeros(len(starts), np.int64)
    active = np.zeros(len(starts), np.int64)
    seq = np.searchsorted(reader.offsets, starts, side="right") - 1
    seq_start, seq_end = reader.offsets[seq], reader.offsets[seq + 1]
    lo = np.maximum(starts - 1, seq_start)  # rows needed: one before and one after, inside the sequence
    hi = np.minimum(ends + 1, seq_end)
    order = np.argsort(lo, kind="stable")
    i = 0
    while i < len(order):
        j, r0, r1 = i + 1, int(lo[order[i]]), int(hi[order[i]])
        while j < len(order) and lo[order[j]] < r1 + 64 and max(r1, hi[order[j]]) - r0 <= RANGE_ROWS:
            r1 = max(r1, int(hi[order[j]]))
            j += 1
        idx = order[i:j]
        on = _on(reader.rows(probe, r0, r1), threshold)
        cum = np.zeros((r1 - r0 + 1, n_units), np.int32)
        np.cumsum(on, axis=0, out=cum[1:])
        s, e = starts[idx] - r0, ends[idx] - r0
        full = (cum[e] - cum[s]) == (e - s)[:, None]
        if off_before:
            inside = starts[idx] > seq_start[idx]
            full[inside] &= ~on[s[inside] - 1]
        if off_after:
            inside = ends[idx] < seq_end[idx]
            full[inside] &= ~on[e[inside]]
        inter[idx] = full[:, is_sel].sum(axis=1)
        active[idx] = full.sum(axis=1)
        i = j
        if should_stop is not None and should_stop():
            raise Cancelled("the query was cancelled")
    return inter, active - inter + len(selected)


def _span_text(reader: CorpusReader, start: int, end: int, seq_start: int, seq_end: int):
    a, b = max(seq_start, start - CONTEXT), min(seq_end, end + CONTEXT)
    b_text = min(end, start + MAX_SPAN_TEXT)
    texts = reader.texts(a, b)
    if texts is None:
        return None, None, None
    body = "".join(texts[start - a:b_text - a]) + ("…" if b_text < end else "")
    return "".join(texts[:start - a]), body, "".join(texts[end - a:])


def _check_args(limit, threshold) -> float:
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise CorpusQueryError(f"the number of results must be positive, got {limit!r}")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise CorpusQueryError(f"the threshold must be a finite number, got {threshold}")
    return threshold


def match(corpus, probe: str, sequence: int, span, threshold: float = DEFAULT_THRESHOLD, *,
          off_before: bool = False, off_after: bool = False, limit: int | None = DEFAULT_LIMIT,
          min_length: int = MIN_LENGTH, progress=None, should_stop=None) -> MatchResult:
    """Spans of the corpus where the units on over ``span`` (steps ``a:b`` of ``sequence``) are on
    together, ranked as LSTMVis ranks them (see the module doc)."""
    threshold = _check_args(limit, threshold)
    with opened(corpus) as reader:
        sequence = reader.check_sequence(sequence)
        reader.probe(probe)
        a, b = (int(x) for x in span)
        length = int(reader.offsets[sequence + 1] - reader.offsets[sequence])
        if not 0 <= a < b <= length:
            raise CorpusQueryError(f"span {a}:{b} is not inside sequence {sequence}, which has steps 0..{length - 1} "
                              f"(give A:B with 0 <= A < B <= {length})")
        units = selected_units(reader, probe, sequence, a, b, threshold, off_before, off_after)
        if not len(units):
            around = " and off around it" if off_before or off_after else ""
            raise CorpusQueryError(f"no unit of {probe} is >= {threshold:g} at every step of sequence {sequence} "
                              f"{a}:{b}{around}; lower the threshold or select a shorter span")
        g0 = int(reader.offsets[sequence])
        found = match_units(reader, probe, units, threshold, off_before=off_before, off_after=off_after, limit=limit,
                            min_length=min_length, selection=(g0 + a, g0 + b), progress=progress,
                            should_stop=should_stop)
        return MatchResult(probe, sequence, (a, b), threshold, bool(off_before), bool(off_after), *found)


def match_units(corpus, probe: str, units, threshold: float = DEFAULT_THRESHOLD, *, off_before: bool = False,
                off_after: bool = False, limit: int | None = DEFAULT_LIMIT, min_length: int = MIN_LENGTH,
                selection: tuple | None = None, progress=None, should_stop=None):
    """Steps 2-4 of the module doc for a given set of selected ``units`` (chosen anywhere, e.g. on
    a run of the model in the window).  ``selection``: the global token range of the selection,
    to flag the spans that contain it.  Returns (units, spans, candidates scored, levels)."""
    threshold = _check_args(limit, threshold)
    with opened(corpus) as reader:
        n_units = reader.n_units(probe)
        units = np.unique(np.asarray(units, dtype=np.int64))
        if not len(units) or units[0] < 0 or units[-1] >= n_units:
            raise CorpusQueryError(f"select units of {probe} (0..{n_units - 1}) to match; got {units.tolist()[:10]}")
        counts = unit_counts(reader, probe, units, threshold, progress, should_stop)
        seen = np.zeros(0, np.int64)
        found_s, found_e, found_i, found_u = [], [], [], []
        levels = 0
        for level in range(len(units), 0, -1):
            levels += 1
            s, e = runs_at_level(counts, level, reader.offsets, min_length)
            key = s * (reader.n_tokens + 1) + e
            new = ~np.isin(key, seen)
            s, e = s[new], e[new]
            seen = np.union1d(seen, key[new])
            if len(s):
                inter, union = score_spans(reader, probe, s, e, units, threshold, off_before, off_after, should_stop)
                found_s.append(s), found_e.append(e), found_i.append(inter), found_u.append(union)
            if limit is not None and sum(int((i >= level).sum()) for i in found_i) >= limit:
                break
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
        s, e, inter, union = cat(found_s), cat(found_e), cat(found_i), cat(found_u)
        order = np.lexsort((s, -(e - s), union, -inter))
        if limit is not None:
            order = order[:limit]
        g0, g1 = selection if selection is not None else (-1, -1)
        seqs, steps = reader.locate(s[order])
        spans = []
        for rank, (i, q, st) in enumerate(zip(order, seqs, steps)):
            st0, st1 = int(reader.offsets[q]), int(reader.offsets[q + 1])
            before, text, after = _span_text(reader, int(s[i]), int(e[i]), st0, st1)
            spans.append(Span(rank=rank + 1, position=int(s[i]), length=int(e[i] - s[i]), sequence=int(q),
                              step=int(st), intersection=int(inter[i]), union=int(union[i]),
                              contains_selection=bool(selection is not None and s[i] <= g0 and e[i] >= g1),
                              before=before, text=text, after=after))
        return [int(u) for u in units], spans, int(len(s)), levels


__all__ = ["match", "match_units", "units_on", "MatchResult", "Span", "selected_units", "unit_counts", "runs_at_level", "score_spans",
           "DEFAULT_THRESHOLD", "DEFAULT_LIMIT", "MIN_LENGTH"]
