"""PyTorch's two checkpoint layouts read through :mod:`.safe_unpickle`'s walker: the zip format
(``data.pkl`` + ``data/<key>`` entries) and the legacy format (pickles of the magic number, the
protocol version and the system info, then the object, then the storage keys, then each
storage's element count and raw bytes).  Every storage is checked against the bytes really
present before anything is allocated; every tensor view against its storage."""
from __future__ import annotations

import io
import os
import zipfile

import torch

from ..errors import LoadError
from ..limits import display_name, read_zip_entry
from .safe_unpickle import _BoundedReader, _is_int, StandIn, Storage, StorageType, UnsafePickle, Walker

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _Storages:
    """The persistent ids of one file: storages by key (and legacy ``module`` ids)."""

    def __init__(self, check_size=None):
        self.by_key: dict[str, Storage] = {}
        self.check_size = check_size  # (key, nbytes) -> None, raises when the file cannot hold it

    def __call__(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise UnsafePickle("a persistent id is not a tuple")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:  # legacy torch.save(model): (module, class, file, source)
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            what = f"a stand-in for {kind.qualified}" if isinstance(kind, StandIn) else repr(str(kind)[:40])
            raise UnsafePickle(f"the pickle refers to outside data by {what}, which torch does not write")
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        if not isinstance(stype, StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise UnsafePickle("a storage reference is malformed")
        storage = self.by_key.get(key)
        if storage is None:
            nbytes = numel * torch.empty(0, dtype=stype.dtype).element_size()
            if self.check_size is not None:
                self.check_size(key, nbytes)
            storage = self.by_key[key] = Storage(key, stype.dtype, numel)
        elif storage.dtype != stype.dtype or storage.numel != numel:
            raise UnsafePickle(f"storage {key} is named with two different types or sizes")
        if view is None:
            return storage
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])
                and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= numel):
            raise UnsafePickle(f"a view of storage {key} lies outside it")
        part = Storage(f"{key}[{view[1]}:{view[1] + view[2]}]", stype.dtype, view[2])
        part.root, part.offset = storage, view[1]
        return part


def read_torch_safely(f, kind: str, name: str):
    """Unpickle the checkpoint in the open file ``f`` (``kind`` "zip" or "pickle") with
    stand-ins; returns ``(obj, walker)`` where every tensor the pickle builds is a
    :class:`PendingTensor` with its ``tensor`` set.  Raises LoadError."""
    size = os.fstat(f.fileno()).st_size
    try:
        if kind == "zip":
            walker, obj = _read_zip(f, size, name)
        else:
            walker, obj = _read_legacy(f, size, name)
        for t in walker.pending:
            t.materialise()
        return obj, walker
    except LoadError:
        raise
    except UnsafePickle as exc:
        raise LoadError(f"{name} cannot be read: {exc}; nothing in it was imported or run") from None
    except RecursionError:
        raise LoadError(f"{name} is nested too deeply to read") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, UnicodeError, EOFError,
            RuntimeError, zipfile.BadZipFile, OSError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise LoadError(f"{name} is truncated or corrupted: its pickle could not be read ({detail})") from None


def _read_zip(f, size: int, name: str):
    f.seek(0)
    with zipfile.ZipFile(f) as z:
        infos = {i.filename: i for i in z.infolist()}
        pkl = [n for n in infos if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise LoadError(f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
        prefix = pkl[0][: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        if order is not None and read_zip_entry(z, order, name, limit=16).strip() == b"big":
            raise LoadError(f"{name} was written on a big-endian machine, which SeqScope does not read")

        def check_size(key: str, nbytes: int) -> None:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise LoadError(f"{name} is corrupted: its pickle names storage {display_name(key)}, which is not in "
                                "the archive")
            if info.file_size < nbytes:
                raise LoadError(f"{name} is corrupted: storage {display_name(key)} should hold {nbytes:,} bytes, but "
                                f"its entry holds {info.file_size:,}")

        storages = _Storages(check_size)
        walker = Walker(storages)
        data = read_zip_entry(z, infos[pkl[0]], name)
        obj = walker.load(_BoundedReader(io.BytesIO(data), len(data)))
        for key, storage in storages.by_key.items():
            info = infos[f"{prefix}data/{key}"]
            nbytes = storage.numel * torch.empty(0, dtype=storage.dtype).element_size()
            raw = read_zip_entry(z, info, name, limit=max(info.file_size, 0))[:nbytes]
            storage.data = _flat_tensor(raw, storage.dtype)
    return walker, obj


def _read_legacy(f, size: int, name: str):
    """torch's legacy layout: pickles of the magic number, the protocol version and the system
    info, then the object's pickle, then a pickle of the storage keys, then each storage as an
    int64 element count and its raw bytes.  A file whose first pickle is not the magic number is
    a plain pickle (not torch.save), read as the object alone."""
    f.seek(0)
    reader = _BoundedReader(f, size)
    first = Walker(None).load(reader)
    if not (_is_int(first) and first == LEGACY_MAGIC):
        walker = Walker(None)
        f.seek(0)
        return walker, walker.load(reader)
    version = Walker(None).load(reader)
    if version != LEGACY_PROTOCOL:
        raise LoadError(f"{name} is a legacy PyTorch file of an unknown version ({str(version)[:20]})")
    sys_info = Walker(None).load(reader)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise LoadError(f"{name} was written on a big-endian machine, which SeqScope does not read")

    def check_size(key: str, nbytes: int) -> None:
        if nbytes > size:
            raise LoadError(f"{name} is corrupted: storage {display_name(key)} claims {nbytes:,} bytes, more than "
                            f"the whole file ({size:,} bytes)")

    storages = _Storages(check_size)
    walker = Walker(storages)
    obj = walker.load(reader)
    keys = Walker(None).load(reader)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise LoadError(f"{name} is corrupted: the list of its storages is not a list of names")
    for key in keys:
        storage = storages.by_key.get(key)
        if storage is None:
            raise LoadError(f"{name} is corrupted: it holds storage {display_name(key)}, which its pickle never names")
        count = int.from_bytes(reader.read(8).ljust(8, b"\xff"), "little", signed=True)
        if count != storage.numel:
            raise LoadError(f"{name} is truncated or corrupted: storage {display_name(key)} should hold "
                            f"{storage.numel:,} elements, the file says {count:,}")
        nbytes = count * torch.empty(0, dtype=storage.dtype).element_size()
        left = size - f.tell()
        if nbytes > left:
            raise LoadError(f"{name} is truncated: storage {display_name(key)} should hold {nbytes:,} bytes, the file "
                            f"has {max(left, 0):,} left")
        raw = bytearray(nbytes)  # read straight into the tensor's memory: no second copy
        if f.readinto(raw) != nbytes:
            raise LoadError(f"{name} is truncated: storage {display_name(key)} ends early")
        storage.data = torch.frombuffer(raw, dtype=storage.dtype) if nbytes else torch.empty(0, dtype=storage.dtype)
    return walker, obj


def _flat_tensor(raw: bytes, dtype: torch.dtype) -> torch.Tensor:
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)

