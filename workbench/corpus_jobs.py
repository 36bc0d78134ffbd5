"""What the corpus view asks of a corpus trace, as plain functions run on its worker thread
(``fn(should_stop, progress)`` closures are made by the view).  No Qt here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.corpus.reader import CorpusQueryError, CorpusReader

PREVIEW_CHARS = 80
MAX_LISTED = 5000  # sequences listed in the view


@dataclass(frozen=True)
class CorpusInfo:
    path: str
    n_tokens: int
    n_sequences: int
    probes: list
    has_text: bool
    rows: list  # (sequence, name, tokens, preview) of the first MAX_LISTED sequences
    source: str  # the model it was recorded with


def describe(path: str, should_stop=None) -> CorpusInfo:
    with CorpusReader(path) as r:
        names = r.sequence_names()
        rows = []
        for s in range(min(r.n_sequences, MAX_LISTED)):
            a, b = int(r.offsets[s]), int(r.offsets[s + 1])
            texts = r.texts(a, min(b, a + PREVIEW_CHARS))
            preview = "".join(texts) if texts is not None else ""
            rows.append((s, names[s] if names else "", b - a, preview))
            if should_stop is not None and should_stop():
                break
        return CorpusInfo(path, r.n_tokens, r.n_sequences, list(r.probes), r.has_text, rows,
                          str(r.model_info().get("source") or ""))


@dataclass(frozen=True)
class SequenceInput:
    sequence: int
    step: int
    text: str | None
    values: np.ndarray | None


def read_sequence(path: str, sequence: int, step: int) -> SequenceInput:
    """A sequence's input, to run through the model: its text, or its numeric inputs."""
    with CorpusReader(path) as r:
        s = r.check_sequence(sequence)
        a, b = int(r.offsets[s]), int(r.offsets[s + 1])
        texts = r.texts(a, b)
        if texts is not None:
            return SequenceInput(s, step, "".join(texts), None)
        values = r.inputs(a, b)
        if values is None:
            raise CorpusQueryError("this corpus has neither text nor numeric inputs to run the model on")
        return SequenceInput(s, step, None, np.asarray(values))


def selection_from_trace(values: np.ndarray, span, threshold: float, off_before: bool, off_after: bool):
    """The units on over ``span`` of a [steps, ...] array of the window's own run."""
    from engine.corpus.match import units_on

    v = np.asarray(values).reshape(len(values), -1)
    a, b = span
    if not 0 <= a < b <= len(v):
        raise CorpusQueryError(f"the span {a}:{b} is not inside the input ({len(v)} steps)")
    before = v[a - 1] if off_before and a > 0 else None
    after = v[b] if off_after and b < len(v) else None
    units = units_on(v[a:b], threshold, before, after)
    if not len(units):
        raise CorpusQueryError(f"no unit is >= {threshold:g} at every step of {a}:{b}"
                          f"{' and off around it' if off_before or off_after else ''}; lower the threshold or "
                          f"select a shorter span")
    return units
