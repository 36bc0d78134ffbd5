"""Reading a corpus trace for the queries, a block at a time.

A corpus trace is a trace file (DESIGN.md §3, :mod:`engine.hdf5`) with many sequences, written
by ``seqscope trace --corpus`` or by :func:`engine.hdf5.save_trace` of a multi-sequence trace;
its datasets may be HDF5 virtual datasets stitching shard files.  :class:`CorpusReader` never
reads a whole probe: the queries ask it for blocks of tokens (all units, or a few units) and for
the text, ids and inputs of a window.  What it keeps in memory is the sequence offsets
(8 bytes per sequence).

Checked when opened or first used, each refused in one sentence (:class:`CorpusQueryError`):
the file is a SeqScope trace of a schema this version reads; the tokens, offsets and the probe
asked for have the layout of §3 (lengths, dtypes, offsets cutting the tokens into sequences);
every shard file a virtual dataset names exists (HDF5 would read missing shards as zeros);
probe, unit and sequence numbers a query names exist.

A ``/summary/<probe>/`` group (:mod:`engine.corpus.summary`) is used only when it describes the
file's data: its unit count matches and every unit's ``count + nonfinite`` equals the number of
tokens (a summary of fewer tokens, from an interrupted run, is ignored).
"""
from __future__ import annotations

import json
import math
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import SeqScopeError

BLOCK_BYTES = 32 << 20  # about this many bytes of probe values per block read


class CorpusQueryError(SeqScopeError):
    """A corpus trace or a query on it that cannot be answered, with the reason."""


def _attr_text(v) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


class CorpusReader:
    """An open corpus trace.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, path):
        import h5py

        from ..hdf5_read import check_trace_file

        self.path = Path(path)
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise CorpusQueryError(f"no corpus trace at {self.path}" if isinstance(exc, FileNotFoundError)
                              else f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise CorpusQueryError(f"{self.path} is not a regular file; corpus traces are HDF5 files")
        try:
            self.f = h5py.File(self.path, "r")
        except (OSError, ValueError, RuntimeError) as exc:
            raise CorpusQueryError(f"{self.path} is not an HDF5 trace file (or it is damaged): {str(exc)[:120]}") from None
        try:
            try:
                check_trace_file(self.f, self.path)
            except SeqScopeError as exc:
                raise CorpusQueryError(str(exc)) from None
            self._read_layout()
        except BaseException:
            self.f.close()
            raise
        self._checked: dict[str, object] = {}

    # -- layout ------------------------------------------------------------------------------
    def _fail(self, what: str):
        raise CorpusQueryError(f"{self.path} is not a readable corpus trace: {what}")

    def _dataset(self, where: str, optional: bool = False):
        import h5py

        node = self.f.get(where)
        if node is None:
            if optional:
                return None
            self._fail(f"it has no /{where}")
        if not isinstance(node, h5py.Dataset):
            self._fail(f"/{where} is not a dataset")
        self._check_sources(node, where)
        return node

    def _check_sources(self, ds, where: str) -> None:
        """A virtual dataset's shard files must exist: HDF5 fills missing ones with zeros."""
        if not ds.is_virtual:
            return
        for src in ds.virtual_sources():
            name = src.file_name
            if name == ".":
                continue
            p = Path(name) if os.path.isabs(name) else self.path.parent / name
            if not p.is_file():
                self._fail(f"/{where} is stitched from shard files and {name} is missing (restore it, or "
                           f"record the missing part again with --resume)")

    def _read_layout(self) -> None:
        ids = self._dataset("tokens/ids")
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            self._fail(f"/tokens/ids should be integers [N], found {ids.dtype} {tuple(ids.shape)}")
        self.n_tokens = int(ids.shape[0])
        offsets = self._dataset("sequences/offsets")
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.shape[0] < 1:
            self._fail(f"/sequences/offsets should be integers [S+1], found {offsets.dtype} {tuple(offsets.shape)}")
        off = offsets[...].astype(np.int64)
        if off[0] != 0 or off[-1] != self.n_tokens or np.any(np.diff(off) < 0):
            self._fail(f"/sequences/offsets do not cut the {self.n_tokens:,} tokens into sequences")
        self.offsets = off
        text = self._dataset("tokens/text", optional=True)
        if text is not None and (text.ndim != 1 or text.shape[0] != self.n_tokens):
            self._fail(f"/tokens/text has shape {tuple(text.shape)} for {self.n_tokens:,} tokens")
        self._text = text
        self._text_escaped = text is not None and _attr_text(text.attrs.get("encoding")) == "unicode_escape"
        inputs = self._dataset("inputs/values", optional=True)
        if inputs is not None and (inputs.ndim != 2 or inputs.shape[0] != self.n_tokens):
            self._fail(f"/inputs/values has shape {tuple(inputs.shape)} for {self.n_tokens:,} tokens")
        self._inputs = inputs
        order = None
        group = self.f.get("probes")
        if group is not None:
            try:
                order = json.loads(_attr_text(group.attrs.get("order")) or "null")
            except ValueError:
                order = None
            if not isinstance(order, list) or not all(isinstance(x, str) for x in order):
                order = list(group)
        self.probes = [p for p in (order or []) if p == "logits" or p in (group or {})]
        if "logits" in self.f and "logits" not in self.probes:
            self.probes.append("logits")

    # -- basic facts -------------------------------------------------------------------------
    @property
    def n_sequences(self) -> int:
        return len(self.offsets) - 1

    @property
    def has_text(self) -> bool:
        return self._text is not None

    @property
    def has_inputs(self) -> bool:
        return self._inputs is not None

    def model_info(self) -> dict:
        m = self.f.get("model")
        out = {}
        if m is not None:
            for k, v in m.attrs.items():
                v = v.item() if isinstance(v, np.generic) else v
                out[k] = _attr_text(v) if isinstance(v, bytes) else v
        return out

    def sequence_names(self) -> list[str] | None:
        ds = self.f.get("sequences/names")
        if ds is None or getattr(ds, "shape", None) != (self.n_sequences,):
            return None
        return [str(x) for x in ds.asstr()[...]]

    def check_sequence(self, s) -> int:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < self.n_sequences:
            raise CorpusQueryError(f"sequence {s!r} is not in this corpus (it has sequences 0..{self.n_sequences - 1})")
        return int(s)

    def locate(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """(sequence, step) of global token positions."""
        pos = np.asarray(positions, dtype=np.int64)
        seq = np.searchsorted(self.offsets, pos, side="right") - 1
        return seq, pos - self.offsets[seq]

    # -- probes ------------------------------------------------------------------------------
    def probe(self, name: str):
        """The checked dataset of probe ``name``."""
        if name in self._checked:
            return self._checked[name]
        if name not in self.probes:
            shown = ", ".join(self.probes[:12]) + (" …" if len(self.probes) > 12 else "")
            raise CorpusQueryError(f"the corpus has no probe {name!r}; it has: {shown or 'none'}")
        ds = self._dataset(name if name == "logits" else f"probes/{name}")
        if ds.dtype.kind != "f" or ds.ndim < 2 or ds.shape[0] != self.n_tokens:
            self._fail(f"probe {name} is {ds.dtype} {tuple(ds.shape)}, expected floats [{self.n_tokens}, units...]")
        self._checked[name] = ds
        return ds

    def unit_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self.probe(name).shape[1:])

    def n_units(self, name: str) -> int:
        return math.prod(self.unit_shape(name))

    def check_unit(self, name: str, unit) -> int:
        n = self.n_units(name)
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < n:
            raise CorpusQueryError(f"probe {name} has units 0..{n - 1}; there is no unit {unit!r}")
        return int(unit)

    def stored_dtype(self, name: str) -> np.dtype:
        return self.probe(name).dtype

    def block_rows(self, name: str, n_units: int | None = None) -> int:
        """Rows per block: a multiple of the dataset's chunk rows, about BLOCK_BYTES of values."""
        ds = self.probe(name)
        width = n_units if n_units is not None else self.n_units(name)
        rows = max(1, BLOCK_BYTES // max(1, width * 8))
        chunk = ds.chunks[0] if ds.chunks else 1
        return max(chunk, rows // chunk * chunk)

    def rows(self, name: str, start: int, stop: int, units=None) -> np.ndarray:
        """Values of tokens ``start:stop`` as stored, flattened to ``[n, units]``; ``units`` (sorted
        unique ints) picks columns, reading only the chunk columns that hold them."""
        ds = self.probe(name)
        if units is None:
            return ds[start:stop].reshape(stop - start, -1)
        units = np.asarray(units, dtype=np.int64)
        if ds.ndim != 2:
            return ds[start:stop].reshape(stop - start, -1)[:, units]
        width = ds.chunks[1] if ds.chunks else ds.shape[1]
        groups = units // width
        parts = []
        for g in np.unique(groups):
            sel = units[groups == g]
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            parts.append(ds[start:stop, lo:hi][:, sel - lo])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def blocks(self, name: str, units=None, start: int = 0, stop: int | None = None):
        """Yield ``(first_token, values [n, k])`` over tokens ``start:stop`` in blocks."""
        stop = self.n_tokens if stop is None else stop
        step = self.block_rows(name, None if units is None else len(units))
        for a in range(start, stop, step):
            b = min(stop, a + step)
            yield a, self.rows(name, a, b, units)

    def summary(self, name: str):
        """The probe's :class:`engine.corpus.summary.Summary` when the file has a valid one that
        covers every token, else None."""
        from .summary import SummaryError, Summary

        group = self.f.get(f"summary/{name}")
        if group is None:
            return None
        try:
            s = Summary.read(group)
        except SummaryError:
            return None
        if s.units != self.n_units(name) or not np.all(s.count + s.nonfinite == self.n_tokens):
            return None
        return s

    # -- tokens ------------------------------------------------------------------------------
    def texts(self, start: int, stop: int) -> list[str] | None:
        """The token texts of ``start:stop`` (None for a numeric corpus)."""
        if self._text is None:
            return None
        ds = self._text
        if ds.dtype.kind == "S":  # fixed-width UTF-8, one character per token
            out = [b.decode("utf-8", "replace") for b in ds[start:stop].tolist()]
        else:
            out = [str(x) for x in ds.asstr()[start:stop]]
        if self._text_escaped:
            out = [s.encode("ascii", "backslashreplace").decode("unicode_escape") for s in out]
        return out

    def text_kind(self) -> str | None:
        """'fixed' (one character per token, fixed-width strings), 'vlen', or None."""
        if self._text is None:
            return None
        return "fixed" if self._text.dtype.kind == "S" else "vlen"

    def token_ids(self, start: int, stop: int) -> np.ndarray:
        return self.f["tokens/ids"][start:stop]

    def inputs(self, start: int, stop: int) -> np.ndarray | None:
        return None if self._inputs is None else self._inputs[start:stop]

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextmanager
def opened(path_or_reader):
    """A reader for a path (closed on exit) or an open reader (left open)."""
    if isinstance(path_or_reader, CorpusReader):
        yield path_or_reader
        return
    reader = CorpusReader(path_or_reader)
    try:
        yield reader
    finally:
        reader.close()


__all__ = ["CorpusReader", "CorpusQueryError", "opened"]
