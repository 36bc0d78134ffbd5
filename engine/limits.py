"""What a file may make SeqScope do: open only regular files, read side files up to a cap, and
check every size a file declares (zip entries, tensor views, layer counts, HDF5 datasets) against
the bytes it really holds before anything is allocated or looped over.  Each refusal is a :class:`LoadError`
with one plain sentence."""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import LoadError

MiB = 1 << 20

#: the most SeqScope reads of a JSON or text file kept beside a model (config.json, vocab.json,
#: a shard index, an RWKV vocabulary); real ones are a few MB at most
MAX_SIDE_FILE_BYTES = 64 * MiB
#: the most it reads of a Hugging Face tokenizer.json (large-vocabulary ones reach ~20 MB)
MAX_TOKENIZER_BYTES = 256 * MiB
#: a compressed zip entry may inflate to this much without question …
SMALL_ZIP_ENTRY_BYTES = 16 * MiB
#: … and beyond it to at most this many times its compressed size (torch.save stores entries
#: uncompressed; deflate reaches ~1000x only on data made to do it)
MAX_COMPRESSION_RATIO = 20
#: the most a checkpoint's pickle (data.pkl: the structure, not the tensor bytes) may hold
MAX_PICKLE_BYTES = 1024 * MiB


def display_name(path) -> str:
    """A file name fit for a message: bytes that are not UTF-8 (kept by Python as surrogates)
    shown as U+FFFD, so that printing the message can never fail."""
    text = path if isinstance(path, str) else os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def os_error_text(exc: OSError) -> str:
    """An OSError in plain words."""
    if exc.errno == errno.ENAMETOOLONG:
        return "a part of the path is longer than the 255 bytes a file name may have"
    if exc.errno == errno.ENOENT:
        return "no such file or folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "the path loops through symbolic links"
    if exc.errno == errno.ENXIO:
        return "it is a socket or a device that cannot be read"
    return (exc.strerror or str(exc)).rstrip(".")


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def stat_path(path, what: str = "") -> os.stat_result | None:
    """``os.stat(path)``, or None when nothing is there; any other failure (a name too long, no
    permission, a loop of links) is a LoadError."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        why = os_error_text(exc) if isinstance(exc, OSError) else "the path holds a NUL character"
        raise LoadError(f"cannot open {what + ' ' if what else ''}{display_name(path)}: {why}") from None


def is_regular_file(path) -> bool:
    """Whether ``path`` is a regular file (following links), without ever raising."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def require_regular(path, what: str = "") -> os.stat_result:
    """The stat of ``path``, a LoadError unless it is a regular file (a named pipe would block
    forever, ``/dev/zero`` never ends, a folder is not a file)."""
    label = f"{what + ' ' if what else ''}{display_name(path)}"
    st = stat_path(path, what)
    if st is None:
        raise LoadError(f"cannot open {label}: no such file")
    if not stat.S_ISREG(st.st_mode):
        raise LoadError(f"{label} is {_kind(st.st_mode)}, not a regular file; SeqScope reads only regular files")
    return st


def open_regular(path, what: str = ""):
    """Open ``path`` for reading in binary mode, only if it is a regular file.  The file is
    opened without blocking and checked on the open descriptor, so a named pipe put in its place
    after a check is refused too, never waited on."""
    label = f"{what + ' ' if what else ''}{display_name(path)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LoadError(f"cannot open {label}: no such file") from None
    except (OSError, ValueError) as exc:
        why = os_error_text(exc) if isinstance(exc, OSError) else "the path holds a NUL character"
        raise LoadError(f"cannot open {label}: {why}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise LoadError(f"{label} is {_kind(mode)}, not a regular file; SeqScope reads only regular files")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path, what: str, limit: int = MAX_SIDE_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before and while reading:
    files in /proc report a size of 0)."""
    label = f"{what} {display_name(path)}".strip()
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise LoadError(f"{label} is {size:,} bytes, more than the {limit:,} SeqScope reads for such a file")
        try:  # in pieces: read(limit + 1) would allocate the whole limit for a small file
            parts, total = [], 0
            while total <= limit:
                chunk = f.read(min(MiB, limit + 1 - total))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            data = b"".join(parts)
        except OSError as exc:
            raise LoadError(f"cannot read {label}: {os_error_text(exc)}") from None
    if len(data) > limit:
        raise LoadError(f"{label} holds more than the {limit:,} bytes SeqScope reads for such a file")
    return data


def read_text_capped(path, what: str, limit: int = MAX_SIDE_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes."""
    data = read_capped(path, what, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"{what} {display_name(path)} is not UTF-8 text (byte {exc.start} is not valid)".strip()) \
            from None


# -- zip archives (PyTorch's checkpoint format) ------------------------------------------------
def check_zip_entries(infos, archive_bytes: int, name: str,
                      advice: str = "which no torch.save writes; re-save the weights with torch.save or safetensors"
                      ) -> None:
    """Refuse a zip whose entries declare more than the archive can honestly hold: a compressed
    entry that inflates far beyond its compressed size (a zip bomb), or a stored one larger than
    the archive itself."""
    for info in infos:
        size, packed = int(info.file_size), int(info.compress_size)
        if info.compress_type == 0:  # stored
            if size > archive_bytes:
                raise LoadError(f"{name} is corrupted: its entry {display_name(info.filename)} claims {size:,} bytes, "
                                f"more than the whole file ({archive_bytes:,} bytes)")
        elif size > SMALL_ZIP_ENTRY_BYTES and size > MAX_COMPRESSION_RATIO * max(packed, 1):
            raise LoadError(f"{name} is refused: its entry {display_name(info.filename)} would inflate from "
                            f"{packed:,} to {size:,} bytes (more than {MAX_COMPRESSION_RATIO} times), {advice}")


def read_zip_entry(z, info, name: str, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """An entry's bytes, read in pieces and stopped at ``limit`` whatever the entry declares."""
    if info.file_size > limit:
        raise LoadError(f"{name} is refused: its {display_name(info.filename)} holds {info.file_size:,} bytes, more "
                        f"than the {limit:,} a checkpoint's structure may take")
    parts, total = [], 0
    with z.open(info) as f:
        while True:
            chunk = f.read(1 * MiB)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise LoadError(f"{name} is refused: its {display_name(info.filename)} inflates beyond {limit:,} bytes")
            parts.append(chunk)
    return b"".join(parts)


# -- tensors ---------------------------------------------------------------------------------
def check_tensor_storage(key: str, t, name: str) -> None:
    """Refuse a tensor that claims more elements than its storage holds: a view with stride 0 (or
    overlapping strides) makes 16 bytes look like gigabytes, which copying it would allocate."""
    try:
        numel = t.numel()
        if numel <= 1:
            return
        shape, strides = tuple(t.shape), tuple(t.stride())
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(shape, strides) if s > 0)
        held = t.untyped_storage().nbytes() // max(t.element_size(), 1) - t.storage_offset()
    except (RuntimeError, NotImplementedError):  # sparse or other layouts: no strided storage to check
        return
    if span < numel:
        raise LoadError(f"{name}: tensor {display_name(key)} of shape {list(shape)} is a view whose elements overlap "
                        f"(strides {list(strides)}), not stored weights; re-save it with .contiguous()")
    if span > held:
        raise LoadError(f"{name}: tensor {display_name(key)} of shape {list(shape)} needs {span:,} elements but its "
                        f"storage holds {max(held, 0):,}: the file is corrupted")


def check_declared_layers(declared, tensors: int, name: str, key: str = "n_layer") -> None:
    """A model's stated layer count against the file: every layer has at least one tensor, so a
    count above the number of tensors names layers the file does not hold (and looping over it
    would take as long as the lie is big)."""
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > max(tensors, 0):
        raise LoadError(f"{name}: the config says {key}={declared}, but the file holds only {tensors} tensor"
                        f"{'s' if tensors != 1 else ''}, too few for that many layers")
