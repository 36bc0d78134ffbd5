"""Errors in Qt slots reach the user as one sentence through ``Session.error``, never as a
traceback on the console or an exception lost inside Qt's event loop.

``@reports_errors("Could not open the project")`` on a method of an object with a ``session``
(or on the Session itself): an engine error (``SeqScopeError``) or a file-system error
(``OSError``) shows as "<what>: <its message>"; anything else is unexpected, so its traceback
goes to the log file (:mod:`workbench.log`) and the sentence names the log.
"""
from __future__ import annotations

import functools

from engine.errors import SeqScopeError

from .log import describe_unexpected


def error_sentence(what: str, exc: BaseException) -> str:
    if isinstance(exc, SeqScopeError):
        return f"{what}: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{what}: {exc.strerror}{where}"
    return f"{what}: {describe_unexpected(what, exc)}"


def reports_errors(what: str):
    def decorate(method):
        @functools.wraps(method)  # Qt reads the wrapped signature to decide which arguments to pass
        def slot(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                session = getattr(self, "session", self)
                session.error.emit(error_sentence(what, exc))
                return None

        return slot

    return decorate
