"""Ctrl-C and SIGTERM as exceptions, and held back while C code writes a file.

The command line turns SIGINT and SIGTERM into :class:`Interrupted` (:func:`raising_signals`),
so that every ``finally`` runs: temporaries are removed, old files stay.  Inside HDF5's C code
an exception raised by a signal handler can be swallowed (h5py reports "Exception ignored" from
a destructor and goes on), so while a file is written the handlers only note the signal
(:func:`held_signals`) and the writer asks, after each step, whether one came (``check()``),
raising it there, at a point where the file can still be closed cleanly.

Signal handlers can only be set in the main thread; elsewhere (the workbench's worker) both
context managers do nothing and ``check()`` never raises.
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM arrived: the run stops.  ``exit_status`` is 128 + the signal's
    number (130, 143), as shells report it."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_status = 128 + self.signum
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _Raiser:
    """The handler :func:`raising_signals` installs: it remembers each signal, then raises it.
    (An exception raised inside a C library's callback can be swallowed; the memory lets
    :func:`held_signals` see the signal anyway.)"""

    def __init__(self):
        self.received: list[int] = []

    def __call__(self, signum, frame):
        self.received.append(signum)
        raise Interrupted(signum)


@contextlib.contextmanager
def raising_signals():
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` (a KeyboardInterrupt)
    wherever Python is; the previous handlers come back afterwards.  Meant for a command that
    stops when interrupted: once a signal came, :func:`held_signals` refuses to start a write."""
    if not _in_main_thread():
        yield
        return
    raiser = _Raiser()
    saved = {sig: signal.signal(sig, raiser) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class _Holder:
    """The handler :func:`held_signals` installs: it notes each signal, and ``check`` raises
    the first one."""

    def __init__(self):
        self.pending: list[int] = []

    def __call__(self, signum, frame):
        self.pending.append(signum)

    def check(self) -> None:
        if self.pending:
            raise Interrupted(self.pending[0])


@contextlib.contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM back while the block runs: a signal is only noted, and
    ``check()`` (yielded) raises :class:`Interrupted` for it.  When the block ends the previous
    handlers come back, and a signal that came meanwhile is delivered to them again (the
    command line's handler raises, Python's default raises KeyboardInterrupt, a default SIGTERM
    ends the process) — after the block's own cleanup has run.  Nested blocks share the
    outermost one's hold."""
    holder = _Holder()
    if not _in_main_thread():
        yield holder.check
        return
    enclosing = [h for h in map(signal.getsignal, SIGNALS) if isinstance(h, _Holder)]
    if enclosing:  # already held by an enclosing block
        yield enclosing[0].check
        return
    saved = {}
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if isinstance(previous, _Raiser) and previous.received:  # raised before, and swallowed
            raise Interrupted(previous.received[0])
        if previous in (signal.SIG_IGN, None):  # ignored (or set outside Python): leave it so
            continue
        saved[sig] = signal.signal(sig, holder)
    try:
        yield holder.check
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if holder.pending:
            signal.raise_signal(holder.pending[0])


__all__ = ["Interrupted", "raising_signals", "held_signals", "SIGNALS"]
