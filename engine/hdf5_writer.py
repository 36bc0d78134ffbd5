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


class _Sink:
    """A file object for h5py's ``fileobj`` driver that never fails a write: after the first
    write the disk refuses (or after :meth:`discard`), writes are kept in memory instead.
    ``raw``: the temporary file, opened unbuffered for reading and writing."""

    def __init__(self, raw):
        self.raw = raw
        self.pos = 0
        self.size = os.fstat(raw.fileno()).st_size
        self.error: OSError | None = None
        self._discarding = False
        self._kept: list[tuple[int, bytes]] = []  # (offset, data) that did not reach the disk

    def discard(self) -> None:
        """From now on nothing more reaches the disk (the file is being abandoned)."""
        self._discarding = True

    def _to_disk(self, data: memoryview, offset: int) -> None:
        self.raw.seek(offset)
        done = 0
        while done < len(data):
            done += self.raw.write(data[done:]) or 0

    def write(self, buf) -> int:
        data = memoryview(buf).cast("B")
        if self.error is None and not self._discarding:
            try:
                self._to_disk(data, self.pos)
            except OSError as exc:
                self.error = exc
        if self.error is not None or self._discarding:
            self._kept.append((self.pos, bytes(data)))
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def readinto(self, buf) -> int:
        out = memoryview(buf).cast("B")
        n, got = len(out), 0
        self.raw.seek(self.pos)
        while got < n:
            k = self.raw.readinto(out[got:])
            if not k:
                break
            got += k
        out[got:] = bytes(n - got)  # past the end of what reached the disk
        for offset, data in self._kept:  # what did not reach it
            lo, hi = max(offset, self.pos), min(offset + len(data), self.pos + n)
            if lo < hi:
                out[lo - self.pos:hi - self.pos] = data[lo - offset:hi - offset]
        self.pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        size = max(0, self.size - self.pos) if size is None or size < 0 else size
        buf = bytearray(size)
        self.readinto(buf)
        return bytes(buf)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None and not self._discarding:
            try:
                self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size

    def flush(self) -> None:
        pass


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
