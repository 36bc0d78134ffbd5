"""Corpus traces: record a model over a whole dataset, summarise it while streaming, query it.

``record(model, Corpus(path, ...), "corpus.h5", RecordOptions(...))`` streams a corpus into one
trace file (:mod:`engine.corpus.record`); ``read_summary(path, probe)`` gives a probe's per-unit
statistics (:mod:`engine.corpus.summary`).  Ray scale-out lives in :mod:`engine.corpus.scale_out`,
imported only when asked for.
"""
from __future__ import annotations

from .record import RecordOptions, RecordResult, record
from .sources import Corpus, CorpusError
from .summary import Summary, SummaryError, summarize


def read_summary(path, probe: str) -> Summary:
    """The summary of ``probe`` in the corpus trace at ``path``."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f.get("summary")
        if group is None or probe not in group:
            have = ", ".join(group) if group is not None else "none"
            raise SummaryError(f"{path} has no summary for {probe!r} (summaries: {have})")
        return Summary.read(group[probe])


__all__ = ["record", "RecordOptions", "RecordResult", "Corpus", "CorpusError", "Summary", "SummaryError",
           "summarize", "read_summary"]
