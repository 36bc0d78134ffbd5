"""A file object for h5py's ``fileobj`` driver whose reads see writes still held in memory.

Two writers need HDF5 to write through such an object: the crash-safe trace writer
(:mod:`engine.hdf5_writer`, which holds writes the disk refused) and the journaled corpus file
(:mod:`engine.corpus.journal`, which holds writes into the committed part until the next
commit).  They differ only in which writes reach the disk at once; reading, seeking and the
held writes (``kept``: ``(offset, data)`` in order, later ones win) are the same and live here.
"""
from __future__ import annotations

import os


class OverlayFile:
    """``raw``: the file, opened unbuffered for reading and writing.  Subclasses define
    ``write`` and ``truncate``; what they do not put on disk they append to :attr:`kept`."""

    def __init__(self, raw):
        self.raw = raw
        self.pos = 0
        self.size = os.fstat(raw.fileno()).st_size
        self.kept: list[tuple[int, bytes]] = []

    def _to_disk(self, data, offset: int) -> None:
        self.raw.seek(offset)
        done = 0
        while done < len(data):
            done += self.raw.write(data[done:]) or 0

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
        for offset, data in self.kept:  # what did not reach it
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

    def flush(self) -> None:
        pass
