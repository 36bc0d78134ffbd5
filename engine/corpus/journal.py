"""A file that HDF5 grows and that survives being killed at any moment: the last commit stays.

HDF5 has no crash consistency: a writer killed between two flushes (SIGKILL, a power cut)
leaves object headers and chunk indexes half updated, and the file may not open again.  A corpus
recording grows one file for hours, so here HDF5 writes through a file object (h5py's
``fileobj`` driver) that keeps the file on disk exactly as it was at the last :meth:`commit`:

- a write past the committed end of the file goes straight to disk (nothing committed refers to
  those bytes yet: new chunks of data, mostly);
- a write inside the committed part (object headers, chunk indexes, the superblock, summaries
  overwritten in place) is kept in memory and overlays what reads see;
- :meth:`commit` (after ``h5py.File.flush()``) makes the new state durable in one step: the
  appended bytes are synced, the kept writes are written to a journal beside the file
  (``<file>.journal``, with a CRC) and synced, then applied to the file, synced, and the journal
  is removed.  Opening the file again (:func:`recover`) replays a complete journal, or drops
  an incomplete one, which was never applied.

So whatever kills the process, the file holds the state of the last commit (plus unreferenced
bytes past its end, which HDF5 ignores and later reuses).  Memory: the kept writes of one
commit interval (metadata and in-place overwrites: small).
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from ..overlay_file import OverlayFile

MAGIC = b"SSJOURNAL1\n"
_ENTRY = struct.Struct("<QQ")  # offset, length
_TAIL = struct.Struct("<QQI")  # final file size, number of entries, crc32 of all the bytes before the crc


def journal_path(path) -> Path:
    return Path(str(path) + ".journal")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover(path) -> bool:
    """Finish or drop the journal of ``path`` left by a killed writer; True when one was
    replayed.  Call before opening the file."""
    jpath = journal_path(path)
    if not jpath.exists():
        return False
    data = jpath.read_bytes()
    ok = data.startswith(MAGIC) and len(data) >= len(MAGIC) + _TAIL.size
    if ok:
        size, count, crc = _TAIL.unpack_from(data, len(data) - _TAIL.size)
        ok = zlib.crc32(data[:-4]) == crc
    if ok:
        pos, entries = len(MAGIC), []
        for _ in range(count):
            off, n = _ENTRY.unpack_from(data, pos)
            entries.append((off, data[pos + _ENTRY.size:pos + _ENTRY.size + n]))
            pos += _ENTRY.size + n
        with open(path, "r+b", buffering=0) as f:
            for off, chunk in entries:
                f.seek(off)
                f.write(chunk)
            if size < os.fstat(f.fileno()).st_size:
                f.truncate(size)
            os.fsync(f.fileno())
    jpath.unlink()
    _fsync_folder(jpath.parent)
    return ok


class JournaledFile(OverlayFile):
    """The file object HDF5 writes through (see the module doc).  ``create``: start an empty
    file (an existing one is truncated); otherwise open an existing one after :func:`recover`.
    :attr:`kept` holds the writes inside the committed part, in order."""

    def __init__(self, path, create: bool):
        self.path = Path(path)
        if create:
            journal_path(self.path).unlink(missing_ok=True)
        else:
            recover(self.path)
        super().__init__(open(self.path, "w+b" if create else "r+b", buffering=0))
        self.committed = self.size

    # -- the writes h5py makes (reads, seeks: OverlayFile) ------------------------------------
    def write(self, buf) -> int:
        data = memoryview(buf).cast("B")
        n = len(data)
        off, end = self.pos, self.pos + n
        if off < self.committed:  # the part that lands on committed bytes is kept
            cut = min(end, self.committed) - off
            self.kept.append((off, bytes(data[:cut])))
            if cut < n:
                self._to_disk(data[cut:], off + cut)
        else:
            self._to_disk(data, off)
        self.pos = end
        self.size = max(self.size, end)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if size >= self.committed:  # only uncommitted bytes go: safe now
            self.raw.truncate(size)
        self.size = size  # a cut into the committed part waits for the commit
        return size

    # -- commits -----------------------------------------------------------------------------
    def commit(self) -> None:
        """Make the current content the durable state of the file (call after the HDF5 file's
        ``flush()``)."""
        os.fsync(self.raw.fileno())  # appended bytes first: the journal's metadata refers to them
        if self.kept or self.size < self.committed:
            body = bytearray(MAGIC)
            for off, data in self.kept:
                body += _ENTRY.pack(off, len(data)) + data
            body += _TAIL.pack(self.size, len(self.kept), 0)[:-4]
            body += struct.pack("<I", zlib.crc32(bytes(body)))
            jpath = journal_path(self.path)
            tmp = jpath.with_name(jpath.name + ".tmp")
            with open(tmp, "wb") as j:
                j.write(body)
                j.flush()
                os.fsync(j.fileno())
            os.replace(tmp, jpath)
            _fsync_folder(jpath.parent)
            for off, data in self.kept:
                self._to_disk(memoryview(data), off)
            if self.size < os.fstat(self.raw.fileno()).st_size:
                self.raw.truncate(self.size)
            os.fsync(self.raw.fileno())
            jpath.unlink()
            self.kept = []
        self.committed = self.size

    def close(self) -> None:
        """Close without committing (what was not committed is dropped on the next open)."""
        self.raw.close()


__all__ = ["JournaledFile", "recover", "journal_path"]
