"""A corpus trace file being grown: the trace schema (DESIGN.md §3, :mod:`engine.hdf5`) with every
per-token dataset resizable, plus ``/summary`` and ``/progress``.

What a corpus trace adds to a trace file
----------------------------------------
- ``/probes/<name>``, ``/logits``, ``/tokens/*``, ``/inputs/values``: resizable along tokens,
  chunked ``[1024 tokens x 32 units]`` (about 64 KB in float16: a sequence's window and one
  unit across the corpus both read few chunks), optionally gzip/lzf-compressed.
- ``/tokens/text``: fixed-width UTF-8 (4 bytes) for character vocabularies, variable-length
  UTF-8 otherwise.  A NUL character (which HDF5 strings cannot hold) is stored as U+2400 ``␀``
  and a note says how many there were.
- ``/sequences/names`` utf-8 ``[S]``: where each sequence came from (``file.py``, ``file.py[2]``
  for its third piece, ``data.jsonl:17``, ``big.txt:120`` the paragraph starting at line 120).
- ``/summary/<probe>/``: per-unit statistics, see :mod:`engine.corpus.summary`; attr ``skipped``
  on ``/summary`` (JSON {probe: reason}) for probes too large to summarise.
- ``/progress`` (attrs): ``sequences_done``, ``tokens_done``, ``complete`` (0/1), ``first_sequence``
  (the corpus number of this file's first sequence: 0, or a shard's start), ``options`` (JSON:
  the corpus and recording options; a resumed run must match them).

Everything is written through :class:`engine.corpus.journal.JournaledFile`, so the file on disk
always holds the state of the last :meth:`CorpusFile.commit` (taken after whole batches only); a
new file gets its name only after its first commit.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import SeqScopeError
from ..hdf5 import FORMAT, SCHEMA_VERSION, _now, _version, _write_spec_attrs, write_model_attrs
from .journal import JournaledFile
from .summary import MAX_UNITS, Summary

CHUNK_UNITS = 32  # units per chunk
CHUNK_VALUES = 32 * 1024  # values per chunk: 1024 tokens of 32 units
CACHE_BYTES = 32 << 20  # HDF5 chunk cache per dataset (holds a batch's last, partial row of chunks)
NUL_STAND_IN = "\u2400"


class CorpusFileError(SeqScopeError):
    """A corpus trace that cannot be written or continued, with the reason."""


def probe_chunks(unit_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape for a probe: at most CHUNK_UNITS units (from the last axes), and tokens to
    make CHUNK_VALUES values."""
    chunk, left = [], CHUNK_UNITS
    for n in reversed(unit_shape):
        c = max(1, min(n, left))
        chunk.insert(0, c)
        left = max(1, left // c)
    return (max(256, CHUNK_VALUES // max(1, math.prod(chunk))),) + tuple(chunk)


def _resizable(group, name, unit_shape, dtype, comp=None, chunks=None):
    chunks = chunks or probe_chunks(tuple(unit_shape))
    return group.create_dataset(name, shape=(0,) + tuple(unit_shape), maxshape=(None,) + tuple(unit_shape),
                                dtype=dtype, chunks=chunks, **(comp or {}))


def _append(ds, data) -> None:
    n = len(ds)
    ds.resize(n + len(data), axis=0)
    ds[n:] = data


class CorpusFile:
    """An open corpus trace (a ``.partial`` file or a shard).  Use :meth:`create` or :meth:`reopen`."""

    def __init__(self, raw: JournaledFile, f, options: dict):
        self.raw, self.f, self.options = raw, f, options
        self.names = json.loads(f["probes"].attrs["order"])
        progress = f["progress"].attrs
        self.sequences_done = int(progress["sequences_done"])
        self.tokens_done = int(progress["tokens_done"])
        self.first_sequence = int(progress["first_sequence"])
        self.notes = list(json.loads(f.attrs["notes"]))
        self.nul_count = int(progress.get("nul_characters", 0))
        text = f["tokens"].get("text")
        self.text_kind = None if text is None else ("fixed" if text.dtype.kind == "S" else "vlen")
        self.summaries: dict[str, Summary] = {}
        for name in self.names:
            if name in f["summary"]:
                self.summaries[name] = Summary.read(f["summary"][name])

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, model_info: dict, specs: list, dtype, compression, text_kind: str | None,
               features: int | None, options: dict, k: int, bins: int, first_sequence: int = 0) -> "CorpusFile":
        """A new, empty corpus trace at ``path``.  ``specs``: the ProbeSpecs recorded, in order;
        ``text_kind``: "fixed", "vlen" or None (numeric inputs); ``features``: F for numeric."""
        import h5py

        path = Path(path)
        fresh = path.with_name(path.name + ".new")  # renamed to ``path`` after its first commit
        raw = JournaledFile(fresh, create=True)
        f = None
        try:
            f = h5py.File(raw, "w", rdcc_nbytes=CACHE_BYTES, rdcc_nslots=10007)
            f.attrs.update({"format": FORMAT, "schema_version": SCHEMA_VERSION, "seqscope_version": _version(),
                            "created": _now(), "interventions": "[]", "notes": "[]"})
            write_model_attrs(f.create_group("model"), model_info)
            tokens = f.create_group("tokens")
            _resizable(tokens, "ids", (), np.int32, chunks=(65536,))
            if text_kind == "fixed":
                _resizable(tokens, "text", (), h5py.string_dtype("utf-8", 4), chunks=(65536,)).attrs["encoding"] = "utf-8"
            elif text_kind == "vlen":
                _resizable(tokens, "text", (), h5py.string_dtype("utf-8"), chunks=(16384,)).attrs["encoding"] = "utf-8"
            seqs = f.create_group("sequences")
            offsets = _resizable(seqs, "offsets", (), np.int64, chunks=(4096,))
            _append(offsets, np.zeros(1, np.int64))
            _resizable(seqs, "names", (), h5py.string_dtype("utf-8"), chunks=(4096,))
            if features is not None:
                _resizable(f.create_group("inputs"), "values", (features,), np.float32)
            comp = {"gzip": {"compression": "gzip"}, "lzf": {"compression": "lzf"}, None: {}}[compression]
            group = f.create_group("probes", track_order=True)
            group.attrs["order"] = json.dumps([s.name for s in specs])
            summary = f.create_group("summary")
            skipped = {}
            for spec in specs:
                where = f if spec.name == "logits" else group
                ds = _resizable(where, spec.name, spec.shape, dtype, comp)
                _write_spec_attrs(ds, spec)
                units = math.prod(spec.shape)
                if units > MAX_UNITS:
                    skipped[spec.name] = f"{units:,} units per token (summaries stop at {MAX_UNITS:,})"
                else:
                    Summary(spec.shape, k=k, bins=bins).write(summary, spec.name)
            summary.attrs["skipped"] = json.dumps(skipped)
            f.create_group("progress").attrs.update({
                "sequences_done": 0, "tokens_done": 0, "complete": 0, "first_sequence": int(first_sequence),
                "options": json.dumps(options, sort_keys=True), "nul_characters": 0})
            f.flush()
            raw.commit()
            os.replace(fresh, path)
            raw.path = path
        except BaseException:
            if f is not None:
                f.close()
            raw.close()
            fresh.unlink(missing_ok=True)
            raise
        return cls(raw, f, options)

    @classmethod
    def reopen(cls, path, options: dict) -> "CorpusFile":
        """Continue the corpus trace at ``path`` (replaying or dropping an unfinished commit);
        refused when it was recorded with other ``options``."""
        import h5py

        raw = JournaledFile(path, create=False)
        try:
            f = h5py.File(raw, "r+", rdcc_nbytes=CACHE_BYTES, rdcc_nslots=10007)
            theirs = json.loads(f["progress"].attrs["options"])
        except (OSError, KeyError, ValueError) as exc:
            raw.close()
            raise CorpusFileError(f"{Path(path).name} cannot be continued: it is not a corpus recording in progress "
                                  f"({str(exc)[:120]}); delete it to start over") from None
        if theirs != json.loads(json.dumps(options, sort_keys=True)):
            f.close()
            raw.close()
            diff = sorted(k for k in set(theirs) | set(options) if theirs.get(k) != options.get(k))
            raise CorpusFileError(f"{Path(path).name} was recorded with other options ({', '.join(diff)} differ); "
                                  f"run with the same ones to resume, or delete it to start over")
        return cls(raw, f, options)

    # -- growing -----------------------------------------------------------------------------
    def append(self, seqs, arrays: dict, inputs: np.ndarray | None = None) -> None:
        """Add a batch: ``seqs`` (engine.corpus.sources.Sequence, in order) and, for each probe,
        its values for their tokens concatenated (``[n, ...]``, already in the stored dtype)."""
        f = self.f
        lengths = np.array([len(s) for s in seqs], np.int64)
        n = int(lengths.sum())
        start = self.tokens_done
        _append(f["tokens/ids"], np.concatenate([s.ids for s in seqs]).astype(np.int32))
        if self.text_kind is not None:
            pieces = [p for s in seqs for p in s.pieces]
            nul = sum(p.count("\x00") for p in pieces)
            if nul:
                self.nul_count += nul
                pieces = [p.replace("\x00", NUL_STAND_IN) for p in pieces]
            _append(f["tokens/text"], _texts(pieces, self.text_kind))
        _append(f["sequences/offsets"], start + np.cumsum(lengths))
        _append(f["sequences/names"], np.array([s.name for s in seqs], dtype=object))
        if inputs is not None:
            _append(f["inputs/values"], inputs.astype(np.float32, copy=False))
        for name in self.names:
            a = arrays[name]
            if len(a) != n:
                raise CorpusFileError(f"probe {name} has {len(a)} rows for a batch of {n} tokens")
            _append(f[name] if name == "logits" else f["probes"][name], a)
            if name in self.summaries:
                self.summaries[name].update(a, start)
        for s in seqs:
            if s.note and len(self.notes) < 20:
                self.notes.append(f"sequence {s.index} ({s.name}): {s.note}")
        self.sequences_done += len(seqs)
        self.tokens_done += n

    def commit(self, complete: bool = False) -> None:
        """Write summaries and progress, and make the file's state durable (see the module doc)."""
        f = self.f
        for name, s in self.summaries.items():
            s.write(f["summary"], name)
        notes = list(self.notes)
        if self.nul_count:
            notes.append(f"{self.nul_count} NUL character(s) in the text are shown as {NUL_STAND_IN} in "
                         f"/tokens/text (HDF5 strings cannot hold NUL); their token ids are exact")
        if complete:
            for name, s in self.summaries.items():
                if s.nonfinite.any():
                    notes.append(f"probe {name} has {int(s.nonfinite.sum()):,} non-finite values (left out of its "
                                 f"summary; /summary/{name}/nonfinite counts them per unit)")
        f.attrs["notes"] = json.dumps(notes)
        f["progress"].attrs.update({"sequences_done": self.sequences_done, "tokens_done": self.tokens_done,
                                    "complete": int(complete), "nul_characters": self.nul_count})
        f.flush()
        self.raw.commit()

    def close(self) -> None:
        """Close; whatever was not committed is dropped (the file keeps its last commit)."""
        try:
            self.f.close()
        finally:
            self.raw.close()


def _texts(pieces: list[str], kind: str) -> np.ndarray:
    import h5py

    if kind == "vlen":
        return np.array(pieces, dtype=object)
    raw = [p.encode("utf-8") for p in pieces]
    if any(len(b) > 4 for b in raw):
        raise CorpusFileError("a token's text is longer than one character in a character-vocabulary corpus")
    return np.array(raw, dtype="S4").astype(h5py.string_dtype("utf-8", 4))


def read_progress(path) -> dict | None:
    """The ``/progress`` attrs of a corpus trace (None when the file has none)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "progress" not in f:
            return None
        attrs = dict(f["progress"].attrs)
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


__all__ = ["CorpusFile", "CorpusFileError", "probe_chunks", "read_progress"]
