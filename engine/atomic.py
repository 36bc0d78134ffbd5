"""Writing outputs so that none is ever partial, lost or clobbered.

Every file SeqScope writes (traces, LSTMVis folders, images, CSV, projects, interventions,
models) goes through here:

- the content is written to a temporary beside the target, in the same folder, under a short
  name (``.ss<6 hex>.tmp``: a target name as long as the file system allows still works, the
  temporary adds nothing to it), synced, and renamed over the target only when complete;
- on any failure (an exception, Ctrl-C, SIGTERM) the temporary is removed and whatever was at
  the target is left untouched (the signals are held back while a file is written and raised
  before the rename: :mod:`engine.interrupts`);
- only a regular file (or nothing) is ever replaced: a device (``/dev/null``), a named pipe, a
  socket or a folder under the target name is refused with one sentence, untouched;
- a folder is replaced as a whole (:func:`replacing_folder`): built complete in a temporary
  sibling folder, then swapped in, so it never mixes new and old files.

Paths may hold any bytes the file system allows (``os.fsdecode``'d, surrogate-escaped names);
only ``os`` calls touch them.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from .errors import SeqScopeError
from .interrupts import held_signals

TEMP_PREFIX = ".ss"


class WriteError(SeqScopeError):
    """An output could not be written; the message says which and why.  Nothing was left
    under the target name and an old file there is unchanged."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def writable_target(path, what: str = "file", error: type[SeqScopeError] = WriteError) -> Path:
    """The file to write for ``path``: a symbolic link is followed (the link stays, its target is
    replaced).  Refuses, without touching anything, a target that exists and is not a regular
    file, and a folder that does not exist."""
    path = Path(path)
    if str(path) == "":
        raise error(f"cannot write {what}: no file name given")
    if "\x00" in str(path):
        raise error(f"cannot write {what}: the file name holds a NUL character, which no file name may")
    try:
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        folder_ok = path.parent.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, a path through a file, ...
        raise error(f"cannot write {what} {_short_name(path)}: {_reason(exc)}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise error(f"cannot write {what} to {path}: it is {_kind(st.st_mode)}, and only a regular "
                    "file is ever replaced")
    if not folder_ok:
        raise error(f"cannot write {what} {path}: folder {path.parent} does not exist")
    return path


def _short_name(path: Path) -> str:
    """``path`` for a message: a very long one cut in the middle."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:70]}…{text[-70:]}"


def _new_temporary(folder: Path, suffix: str, make_dir: bool = False) -> Path:
    for _ in range(100):
        tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(3)}{suffix}"
        try:
            if make_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def remove_quietly(path) -> None:
    """Remove a temporary file or folder; already gone is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:  # cannot be removed (permissions changed under us): nothing more to do
        pass


def sync_file(path) -> None:
    """Write ``path``'s data to the disk (errors such as a full disk surface here, as OSError)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is done either way
        pass
    finally:
        os.close(fd)


def _keep_mode(old: Path, new: Path) -> None:
    """A replaced file keeps its permission bits."""
    try:
        os.chmod(new, stat.S_IMODE(os.stat(old).st_mode))
    except OSError:
        pass


def _failure(error, what, target: Path, existed: bool, exc: BaseException) -> SeqScopeError:
    kept = f"the old {target.name} is unchanged" if existed else "nothing was written there"
    reason = getattr(exc, "write_reason", None) or _reason(exc)
    failure = error(f"could not write {what} {target}: {reason}; {kept}")
    failure.write_reason = reason  # what went wrong, for a caller that writes a larger whole
    return failure


@contextlib.contextmanager
def replacing(path, what: str = "file", *, suffix: str = ".tmp", error: type[SeqScopeError] = WriteError):
    """Yield the path of a new, empty temporary file beside ``path``; when the block ends
    without an exception, sync the temporary and rename it over ``path``.

    On any exception, KeyboardInterrupt included, the temporary is removed and the target is
    left as it was.  Ctrl-C and SIGTERM are held back while the block runs and raised before
    the rename (:func:`engine.interrupts.held_signals`), so they never leave a temporary.
    Errors other than SeqScope's own (an OSError such as a full disk, a library's exception)
    come out as ``error`` with one sentence; KeyboardInterrupt and SystemExit pass through
    unchanged.  ``suffix``: the temporary's ending, for writers that choose a format by it
    (``.png``)."""
    target = writable_target(path, what, error)
    existed = target.exists()
    with held_signals() as interrupted:
        try:
            tmp = _new_temporary(target.parent, suffix)
        except OSError as exc:
            raise _failure(error, what, target, existed, exc) from None
        try:
            yield tmp
            interrupted()
            sync_file(tmp)
            if existed:
                _keep_mode(target, tmp)
            writable_target(target, what, error)  # still a regular file (or nothing) at the target?
            os.replace(tmp, target)
        except BaseException as exc:
            remove_quietly(tmp)
            if isinstance(exc, SeqScopeError) or not isinstance(exc, Exception):
                raise
            raise _failure(error, what, target, existed, exc) from None
        _sync_folder(target.parent)


def write_bytes(path, data: bytes, what: str = "file", error: type[SeqScopeError] = WriteError) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`replacing`)."""
    with replacing(path, what, error=error) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return writable_target(path, what, error)


def write_text(path, text: str, what: str = "file", error: type[SeqScopeError] = WriteError) -> Path:
    """Write ``text`` as UTF-8 with ``\\n`` line ends to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), what, error)


# -- folders ---------------------------------------------------------------------------------


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel, or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``; an old folder there goes (as a whole)."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):  # new is now the old folder
        remove_quietly(new)
        return
    old = _new_temporary(target.parent, ".old", make_dir=True)
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    remove_quietly(old)


@contextlib.contextmanager
def replacing_folder(path, what: str = "folder", *, owned: tuple[str, ...] = (),
                     error: type[SeqScopeError] = WriteError):
    """Yield a new, empty temporary folder beside ``path``; when the block ends without an
    exception, put it at ``path`` as a whole (an old folder there is replaced in one step).

    ``owned``: the names an old folder may hold.  A folder holding anything else (the user's own
    files) is refused, untouched, rather than replaced.  Failures as in :func:`replacing`."""
    target = Path(path)
    if "\x00" in str(target):
        raise error(f"cannot write {what}: the folder name holds a NUL character, which no name may")
    try:
        if target.is_symlink():
            target = Path(os.path.realpath(target))
        mode = os.stat(target).st_mode if target.exists() else None
    except (OSError, ValueError) as exc:  # a name too long, a path through a file, ...
        raise error(f"cannot write {what} {_short_name(target)}: {_reason(exc)}") from None
    if mode is not None:
        if not stat.S_ISDIR(mode):
            kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
            raise error(f"cannot write {what} to {target}: it is {kind}, not a folder")
        try:
            names = os.listdir(target)
        except OSError as exc:
            raise error(f"cannot write {what} {target}: {_reason(exc)}") from None
        others = sorted(n for n in names if n not in owned and not n.startswith(TEMP_PREFIX))
        if others:
            shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
            raise error(f"cannot write {what} to {target}: the folder holds files it would replace that "
                        f"are not its own ({shown}); choose a new or empty folder")
    existed = mode is not None
    with held_signals() as interrupted:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = _new_temporary(target.parent, ".tmp", make_dir=True)
        except OSError as exc:
            raise _failure(error, what, target, existed, exc) from None
        try:
            yield tmp
            interrupted()
            for name in os.listdir(tmp):
                sync_file(tmp / name)
            _sync_folder(tmp)
            if existed:
                _keep_mode(target, tmp)
            _swap_in(tmp, target)
        except BaseException as exc:
            remove_quietly(tmp)
            part_failed = getattr(exc, "write_reason", None) is not None  # a file inside: say it of the folder
            if not part_failed and (isinstance(exc, SeqScopeError) or not isinstance(exc, Exception)):
                raise
            raise _failure(error, what, target, existed, exc) from None
        _sync_folder(target.parent)


__all__ = ["WriteError", "replacing", "replacing_folder", "write_bytes", "write_text", "writable_target",
           "sync_file", "remove_quietly", "TEMP_PREFIX"]
