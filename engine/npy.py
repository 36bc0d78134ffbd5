"""Reading one ``.npy`` array safely: the header must parse (numpy reads it with ``ast``, so any
damage shows as some exception), name a plain numeric dtype (never objects: that would be a
pickle), and declare no more data than the stream holds, so a 16-byte lie cannot allocate
terabytes.  Used for numeric inputs (:func:`engine.tokenizers.read_numeric`) and ``.npz``
weight archives (:mod:`engine.loading.npz_files`)."""
from __future__ import annotations

import numpy as np

from .errors import SeqScopeError

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def read_npy(f, held: int, name: str, error: type[SeqScopeError], kinds: str = NUMERIC_KINDS) -> np.ndarray:
    """The array in the binary stream ``f`` (at the start of a ``.npy``), which holds ``held``
    bytes from there on; anything wrong is ``error`` with one sentence about ``name``."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError
        start = f.tell()
        shape, fortran, dtype = read_header(f)
        header_bytes = f.tell() - start + 8  # the magic string and version before the header
    except Exception:
        raise error(f"{name} is not a readable .npy array (its header is damaged)") from None
    if dtype.hasobject or dtype.kind not in kinds:
        raise error(f"{name}: the array holds {dtype}, not numbers")
    count = int(np.prod(shape, dtype=object))
    data_bytes = held - header_bytes
    if count * dtype.itemsize > data_bytes:
        raise error(f"{name} declares an array of shape {tuple(shape)} but holds only {max(data_bytes, 0):,} "
                    "bytes of data: the file is truncated or damaged")
    raw = f.read(count * dtype.itemsize)
    if len(raw) < count * dtype.itemsize:
        raise error(f"{name} is truncated: its array data ends early")
    arr = np.frombuffer(raw, dtype=dtype, count=count).copy()
    return arr.reshape(shape, order="F" if fortran else "C")
