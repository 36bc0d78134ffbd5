"""NumPy ``.npz`` weight archives (``np.savez(path, **state_dict)``): a zip of ``.npy`` arrays,
read like a state dict.  Every array's header is checked before its data is read
(:func:`engine.npy.read_npy`: plain numbers only, never objects, no more than the entry holds);
1-D arrays of strings (``chars``, ``vocab``) are kept beside the tensors, where the vocabulary
is looked for.  Entry names ``a/b/c.npy`` become ``a.b.c``."""
from __future__ import annotations

import io
import os
import zipfile

import torch

from ..errors import LoadError
from ..limits import check_zip_entries, display_name, open_regular, read_zip_entry
from ..npy import read_npy
from .record import _Found, zip_errors


def is_npz(path) -> bool:
    """Whether ``path`` is a zip whose entries are all ``.npy`` arrays (and not a torch archive)."""
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
    except Exception:  # not a readable zip at all: the torch reader says what is wrong
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_npz(path) -> _Found:
    name = display_name(path.name)
    tensors, extras = {}, {}
    with zip_errors(name):
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            with zipfile.ZipFile(f) as z:
                infos = [i for i in z.infolist() if not i.filename.endswith("/")]
                check_zip_entries(infos, size, name)
                for info in infos:
                    key = info.filename[: -len(".npy")].replace("/", ".")
                    data = read_zip_entry(z, info, name, limit=max(int(info.file_size), 1))
                    arr = read_npy(io.BytesIO(data), len(data), f"{name}: {display_name(info.filename)}",
                                   LoadError, kinds="biufUS")
                    if arr.dtype.kind in "US":
                        if arr.ndim != 1:
                            raise LoadError(f"{name}: {display_name(info.filename)} holds text of shape "
                                            f"{arr.shape}; only a 1-D list of strings (a vocabulary) is read")
                        extras[key] = [str(x) for x in arr.tolist()]
                    else:
                        tensors[key] = torch.from_numpy(arr)
    if not tensors:
        raise LoadError(f"{name} is a NumPy archive with no numeric arrays: nothing to load as weights")
    return _Found(name=name, fmt="npz", tensors=tensors, extras=extras,
                  notes=[f"read as a NumPy .npz archive of {len(tensors)} arrays"])
