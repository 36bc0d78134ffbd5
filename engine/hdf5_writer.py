"""Writing HDF5 files that cannot crash the process, whatever the disk does.

When a write fails inside the HDF5 library (a full disk, a quota, a file-size limit), HDF5's
state is left damaged: h5py reports the failure from a destructor ("Exception ignored ...
Can't close dataset"), and the process then dies of a segmentation fault at the next flush or
at exit.  So HDF5 never sees a failed write here: the file is written through a file object
(h5py's ``fileobj`` driver) that takes every write HDF5 asks for.  When the disk refuses one,
it remembers the error and from then on keeps what HDF5 writes in memory (only what is left to
flush while the writer stops: the writer checks :attr:`_Sink.error` after each step), so HDF5
closes cleanly; then the error is raised, one sentence, and the temporary is removed.

The same holds for Ctrl-C and SIGTERM: they are held back while HDF5 runs and raised between
steps (:mod:`engine.interrupts`), never inside HDF5's callbacks.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

from .atomic import WriteError, replacing, writable_target
from .errors import SeqScopeError
from .interrupts import held_signals
from .overlay_file import OverlayFile


class _Sink(OverlayFile):
    """A file object for h5py's ``fileobj`` driver that never fails a write: after the first
    write the disk refuses (or after :meth:`discard`), writes are kept in memory instead.
    ``raw``: the temporary file, opened unbuffered for reading and writing."""

    def __init__(self, raw):
        super().__init__(raw)
        self.error: OSError | None = None
        self._discarding = False

    def discard(self) -> None:
        """From now on nothing more reaches the disk (the file is being abandoned)."""
        self._discarding = True

    def write(self, buf) -> int:
        data = memoryview(buf).cast("B")
        if self.error is None and not self._discarding:
            try:
                self._to_disk(data, self.pos)
            except OSError as exc:
                self.error = exc
        if self.error is not None or self._discarding:
            self.kept.append((self.pos, bytes(data)))
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None and not self._discarding:
            try:
                self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size


def write_hdf5(path, fill, what: str = "HDF5 file", error: type[SeqScopeError] = WriteError) -> Path:
    """Write an HDF5 file at ``path`` atomically (:func:`engine.atomic.replacing`) and safely
    (see the module doc).  ``fill(f, check)`` writes the content into the open ``h5py.File``
    ``f`` and calls ``check()`` after each step (each dataset, each block of rows): it raises
    the disk's error or a held-back Ctrl-C/SIGTERM there.  Returns the path written."""
    import h5py

    with held_signals() as interrupted:
        with replacing(path, what, error=error) as tmp:
            with open(tmp, "r+b", buffering=0) as raw:
                sink = _Sink(raw)

                def check() -> None:
                    interrupted()
                    if sink.error is not None:
                        raise sink.error

                f = h5py.File(sink, "w")
                try:
                    fill(f, check)
                except BaseException:
                    sink.discard()  # HDF5 closes the abandoned file in memory, cleanly
                    f.close()
                    del f
                    gc.collect()  # no dataset or group object outlives its file
                    raise
                f.close()
                check()
    return writable_target(path, what, error)


__all__ = ["write_hdf5"]
