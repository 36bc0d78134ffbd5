"""One way to read a probe's rows a block at a time, from a :class:`~engine.trace.Trace` in
memory or from a trace file on disk (one run or a whole corpus: the same schema).

A file is opened with the checks of :mod:`engine.hdf5_read` (a regular file, a SeqScope trace of
a known schema, hard links only, a dataset's declared size against the bytes it holds) and its
probes are never read whole: :meth:`TraceSource.blocks` yields ``rows`` tokens at a time, so
statistics over a corpus trace take memory for one block, not for the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..hdf5_read import TraceLoadError, _open, _Reader, check_trace_file
from ..trace import Trace

BLOCK_ROWS = 8192


class TraceSource:
    """The probes, offsets and model info of a trace, and its rows block by block.  Use as a
    context manager (a file stays open until ``close``)."""

    def __init__(self, trace_or_path):
        self._file = None
        if isinstance(trace_or_path, Trace):
            t = trace_or_path
            self.path = None
            self._arrays = dict(t.arrays)
            self.specs = dict(t.specs)
            self.offsets = np.asarray(t.offsets, dtype=np.int64)
            self.model_info = dict(t.model_info)
            self.probes = list(t.arrays)
            return
        path = Path(trace_or_path)
        f, size = _open(path)
        try:
            check_trace_file(f, path)
            reader = _Reader(f, path, size)
            self.model_info = reader.model_info()
            self.offsets = reader.array("sequences/offsets", "iu", (1,)).astype(np.int64)
            n = int(self.offsets[-1]) if len(self.offsets) else 0
            if len(self.offsets) < 1 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
                reader.fail("sequences/offsets do not cut the tokens into sequences")
            group = reader.obj("probes", "group", optional=True)
            names = list(group) if group is not None else []
            self._datasets, self.specs = {}, {}
            for name in names:
                ds = reader.obj(f"probes/{name}", "dataset")
                if ds.dtype.kind != "f" or ds.ndim < 1 or ds.shape[0] != n:
                    reader.fail(f"probes/{name} should be {n} rows of floating-point numbers, "
                                f"found {ds.dtype} {tuple(ds.shape)}")
                reader.check_stored(ds, f"probes/{name}")
                self._datasets[name] = ds
                self.specs[name] = reader.spec(ds, name)
        except TraceLoadError:
            f.close()
            raise
        except (KeyError, OSError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
            f.close()
            raise TraceLoadError(f"{path} is a SeqScope trace but could not be read (damaged?): {exc}") from None
        self._file, self.path = f, path
        self.probes = names

    # -- shape ------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_sequences(self) -> int:
        return len(self.offsets) - 1

    @property
    def architecture(self) -> str:
        return str(self.model_info.get("architecture", ""))

    def config(self) -> dict:
        """The model's config as a dict ({} when the trace does not say)."""
        cfg = self.model_info.get("config", {})
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg)
            except ValueError:
                return {}
        return cfg if isinstance(cfg, dict) else {}

    def row_shape(self, name: str) -> tuple[int, ...]:
        src = self._arrays if self._file is None else self._datasets
        if name not in src:
            raise KeyError(f"probe {name!r} is not in this trace; it has: {', '.join(self.probes)}")
        return tuple(src[name].shape[1:])

    # -- reading ----------------------------------------------------------------------------
    def blocks(self, name: str, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, block)`` for consecutive blocks of at most ``rows`` tokens."""
        self.row_shape(name)
        data = self._arrays[name] if self._file is None else self._datasets[name]
        n = self.n_tokens
        for a in range(0, n, max(1, int(rows))):
            yield a, np.asarray(data[a : min(n, a + rows)])

    def read(self, name: str, sequence: int | None = None) -> np.ndarray:
        """A probe's rows, all of them or one sequence's."""
        self.row_shape(name)
        data = self._arrays[name] if self._file is None else self._datasets[name]
        if sequence is None:
            return np.asarray(data[:])
        if not 0 <= sequence < self.n_sequences:
            raise IndexError(f"sequence {sequence} out of range (the trace has {self.n_sequences})")
        return np.asarray(data[int(self.offsets[sequence]) : int(self.offsets[sequence + 1])])

    def positions(self, start: int, stop: int) -> np.ndarray:
        """The position of rows ``start..stop-1`` within their own sequences."""
        rows = np.arange(start, stop, dtype=np.int64)
        seq = np.searchsorted(self.offsets, rows, side="right") - 1
        return rows - self.offsets[seq]

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
