"""A line of progress on a terminal, redrawn in place (``\\r``) at most every ``every`` seconds,
ended with a newline by :meth:`StatusLine.close` once something was drawn.  What the line says
is the subclass's: :class:`engine.cli.ProgressBar` (a bar for ``run(progress=...)``) and
:class:`engine.corpus.cli_record.CorpusProgressLine` (tokens, rate and time left)."""
from __future__ import annotations

import sys
import time


class StatusLine:
    def __init__(self, label: str, stream=None, every: float = 0.1):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._last = 0.0
        self._shown = False

    def _due(self, last: bool = False) -> float | None:
        """The time now if the line is to be redrawn (always for the ``last`` update), else None."""
        now = time.monotonic()
        if not last and now - self._last < self.every:
            return None
        self._last = now
        return now

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text)
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
