"""The workbench's log file: where the details of an unexpected error (its traceback) go, so that
the window shows one sentence and a developer still gets everything.

The file is ``$SEQSCOPE_LOG_DIR/seqscope.log`` when that is set (tests use it), else
``$XDG_STATE_HOME/seqscope/seqscope.log`` (by default ``~/.local/state/seqscope/seqscope.log``).
It is capped: past ``MAX_BYTES`` it is renamed ``seqscope.log.1`` (replacing the previous one)
and a new one begins, so it never holds more than about twice that.  Writing the log never
raises: a read-only home loses the details, not the user's work.
"""
from __future__ import annotations

import datetime as _dt
import os
import traceback
from pathlib import Path

MAX_BYTES = 1 << 20
NAME = "seqscope.log"


def log_path() -> Path:
    folder = os.environ.get("SEQSCOPE_LOG_DIR")
    if not folder:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        folder = os.path.join(state, "seqscope")
    return Path(folder) / NAME


def write(text: str) -> Path | None:
    """Append one record to the log; returns the log's path, or None if it could not be written."""
    path = log_path()
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = f"--- {stamp} pid {os.getpid()}\n{text.rstrip()}\n".encode("utf-8", "backslashreplace")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.stat().st_size + len(record) > MAX_BYTES:
                os.replace(path, path.with_name(NAME + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, record)  # one write: records from two threads do not interleave
        finally:
            os.close(fd)
    except OSError:
        return None
    return path


def log_exception(context: str, exc: BaseException) -> Path | None:
    """Write ``context`` and ``exc``'s traceback to the log; returns the log's path (or None)."""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return write(f"{context}\n{details}")


def describe_unexpected(context: str, exc: BaseException) -> str:
    """Words for an error nobody planned for: the exception's first line, and where its details
    (logged now, under ``context``) are."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    path = log_exception(context, exc)
    where = f"; the details are in {path}" if path is not None else ""
    return f"an unexpected error ({reason}){where}"
