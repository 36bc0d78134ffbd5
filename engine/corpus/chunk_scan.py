"""A fast path for counting "units on" over a whole probe: read the file's chunks in place.

Match's first pass (:func:`engine.corpus.match.unit_counts`) looks at a few units of every
token.  Through h5py each block is a hyperslab per chunk column, and HDF5's per-chunk overhead,
not the bytes, is most of the time.  A probe stored the way the corpus recorder stores it —
chunked ``[rows x units]``, uncompressed, little-endian float16 or float32, every chunk written,
in this file (not a virtual dataset) — can instead be read straight from the file's bytes (a
memory map) with the chunk addresses HDF5 reports (``chunk_iter``), by a compiled loop that
touches only the selected units.  Anything else returns None and the caller uses h5py.

"On" is decided exactly as :func:`engine.corpus.match._on` decides it (value >= threshold in
float64, NaN off): for float16 through a table of all 65,536 values, for float32 by comparing
with the smallest float32 that is >= the threshold.
"""
from __future__ import annotations

import numpy as np

from .compiled import COMPILED, njit


@njit(nogil=True, cache=True)
def _count16(buf, offsets, chunk_rows, chunk_cols, n_rows, units, table, out):  # pragma: no cover - compiled
    for r in range(offsets.shape[0]):
        first = r * chunk_rows
        m = min(chunk_rows, n_rows - first)
        for u in units:
            base = offsets[r, u // chunk_cols] + 2 * (u % chunk_cols)
            step = 2 * chunk_cols
            for i in range(m):
                p = base + i * step
                out[first + i] += table[np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8)]


@njit(nogil=True, cache=True)
def _count32(buf, offsets, chunk_rows, chunk_cols, n_rows, units, key_min, out):  # pragma: no cover - compiled
    for r in range(offsets.shape[0]):
        first = r * chunk_rows
        m = min(chunk_rows, n_rows - first)
        for u in units:
            base = offsets[r, u // chunk_cols] + 4 * (u % chunk_cols)
            step = 4 * chunk_cols
            for i in range(m):
                p = base + i * step
                b = (np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16)
                     | (np.int64(buf[p + 3]) << 24))
                if (b & 0x7F800000) == 0x7F800000 and (b & 0x7FFFFF) != 0:
                    continue  # NaN
                if b == 0x80000000:
                    b = 0  # -0 is +0
                key = (0xFFFFFFFF - b) if b & 0x80000000 else (b | 0x80000000)
                if key >= key_min:
                    out[first + i] += 1


def _key32(x: np.float32) -> int:
    b = int(np.array(x, np.float32).view(np.uint32))
    if b == 0x80000000:
        b = 0
    return (0xFFFFFFFF - b) if b & 0x80000000 else (b | 0x80000000)


def chunk_offsets(ds) -> np.ndarray | None:
    """Byte offsets [chunk rows, chunk columns] of a 2-D dataset's chunks in its file, or None
    when the fast path does not apply (see the module doc)."""
    if not COMPILED or ds.ndim != 2 or ds.chunks is None or ds.is_virtual or ds.external:
        return None
    if ds.dtype.kind != "f" or ds.dtype.itemsize not in (2, 4) or ds.dtype.byteorder == ">":
        return None
    if ds.id.get_create_plist().get_nfilters() > 0:
        return None
    rows, cols = ds.chunks
    grid = (-(-ds.shape[0] // rows), -(-ds.shape[1] // cols))
    offsets = np.full(grid, -1, np.int64)
    size = rows * cols * ds.dtype.itemsize

    def visit(info):
        if info.size == size and info.filter_mask == 0:
            offsets[info.chunk_offset[0] // rows, info.chunk_offset[1] // cols] = info.byte_offset

    try:
        ds.id.chunk_iter(visit)
    except (AttributeError, RuntimeError, OSError, ValueError):
        return None
    return None if (offsets < 0).any() else offsets


def count_on(path, ds, units: np.ndarray, threshold: float, out: np.ndarray) -> bool:
    """Add, for every token, how many of ``units`` are on to ``out``; False when the fast path
    does not apply (nothing done)."""
    offsets = chunk_offsets(ds)
    if offsets is None or not ds.shape[0]:
        return False
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    if int(offsets.max()) + ds.chunks[0] * ds.chunks[1] * ds.dtype.itemsize > len(buf):
        return False
    units = np.asarray(units, np.int64)
    rows, cols = ds.chunks
    thr = np.float64(threshold)
    if ds.dtype.itemsize == 2:
        values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
        table = np.greater_equal(values, thr).astype(out.dtype)
        _count16(buf, offsets, rows, cols, ds.shape[0], units, table, out)
    else:
        with np.errstate(over="ignore"):
            t32 = np.float32(thr)  # ±inf beyond float32's range
        if np.float64(t32) < thr:  # the smallest float32 >= the threshold (inf above them all)
            t32 = np.nextafter(t32, np.float32(np.inf))
        _count32(buf, offsets, rows, cols, ds.shape[0], units, np.int64(_key32(t32)), out)
    return True


__all__ = ["count_on", "chunk_offsets"]
