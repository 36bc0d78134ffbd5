"""One worker thread for everything slow (loading, forward passes); the newest request wins.

Each request carries an id.  Submitting a request of a kind cancels the running request of the
same kind (through the ``should_stop`` callable every job receives) and drops any queued one,
so a burst of 20 edits yields one final result, computed from the last edit.  Results come back
to the GUI thread by signal; a job never touches Qt widgets.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.errors import Cancelled, SeqScopeError

from .log import describe_unexpected


@dataclass
class Job:
    id: int
    kind: str
    fn: Callable[..., Any]  # fn(should_stop, progress) -> result
    cancelled: threading.Event


class _Worker(QObject):
    """Lives in the worker thread; runs one job at a time from the shared queue."""

    done = Signal(int, str)  # the result waits in Runner._results: no Python object crosses threads
    failed = Signal(int, str, str)
    progress = Signal(int, str, int, int)

    def __init__(self, runner: "Runner"):
        super().__init__()
        self._runner = runner

    @Slot()
    def work(self):
        if self._runner.torch_threads:
            torch.set_num_threads(self._runner.torch_threads)  # this thread's own setting, set once
        while True:
            job = self._runner._next_job()
            if job is None:
                return
            self._runner.gui_thread_ran_job = self._runner.gui_thread_ran_job or (
                threading.current_thread() is threading.main_thread())
            try:
                result = job.fn(job.cancelled.is_set, lambda d, t, j=job: self.progress.emit(j.id, j.kind, d, t))
            except Cancelled:
                continue
            except SeqScopeError as exc:
                self.failed.emit(job.id, job.kind, str(exc))
                continue
            except Exception as exc:  # a bug or an unexpected library error: one sentence, details logged
                self.failed.emit(job.id, job.kind, describe_unexpected(f"a {job.kind!r} job in the worker", exc))
                continue
            if not job.cancelled.is_set():
                with self._runner._lock:
                    self._runner._results[job.id] = result
                self.done.emit(job.id, job.kind)


class Runner(QObject):
    """``submit(kind, fn)`` runs ``fn(should_stop, progress)`` off the GUI thread."""

    finished = Signal(int, str, object)  # id, kind, result
    failed = Signal(int, str, str)  # id, kind, message
    progress = Signal(int, str, int, int)  # id, kind, done, total
    busy_changed = Signal(bool)

    def __init__(self, parent=None, torch_threads: int | None = 1):
        super().__init__(parent)
        #: torch's intra-op threads in the worker (None: torch's default, one per core).  One:
        #: while a slider is dragged the GUI draws one edit as the worker re-runs the next, and
        #: a second torch thread spinning at every step's barrier takes the GUI's core (on a
        #: shared 2-core machine the batch-1 re-runs were also faster with one).  Set once, when
        #: the thread starts: changing it between runs makes oneDNN rebuild its kernels.
        self.torch_threads = torch_threads
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._running: Job | None = None
        self._latest: dict[str, int] = {}
        self._results: dict[int, Any] = {}
        self.gui_thread_ran_job = False  # for tests: must stay False
        self._thread = QThread()
        self._thread.setObjectName("seqscope-runner")
        self._worker = _Worker(self)
        self._worker.moveToThread(self._thread)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._worker.progress.connect(self._on_progress)
        self._thread.started.connect(self._worker.work)
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread.start()

    # -- GUI thread ----------------------------------------------------------------------
    def submit(self, kind: str, fn: Callable) -> int:
        job = Job(next(self._ids), kind, fn, threading.Event())
        with self._lock:
            for queued in [j for j in self._queue if j.kind == kind]:
                queued.cancelled.set()
                self._queue.remove(queued)
            if self._running is not None and self._running.kind == kind:
                self._running.cancelled.set()
            self._queue.append(job)
            self._latest[kind] = job.id
            self._wake.notify()
        self.busy_changed.emit(True)
        return job.id

    def cancel(self, kind: str | None = None):
        with self._lock:
            for job in list(self._queue):
                if kind is None or job.kind == kind:
                    job.cancelled.set()
                    self._queue.remove(job)
            if self._running is not None and (kind is None or self._running.kind == kind):
                self._running.cancelled.set()
        self._emit_busy()

    def is_busy(self) -> bool:
        with self._lock:
            return bool(self._queue) or self._running is not None

    def shutdown(self):
        with self._lock:
            self._stopping = True
            for job in self._queue:
                job.cancelled.set()
            self._queue.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._wake.notify()
        self._thread.quit()
        self._thread.wait()

    def _emit_busy(self):
        self.busy_changed.emit(self.is_busy())

    @Slot(int, str)
    def _on_done(self, job_id, kind):
        with self._lock:
            result = self._results.pop(job_id, None)
        if self._latest.get(kind) == job_id:  # an older request's result is dropped
            self.finished.emit(job_id, kind, result)
        self._emit_busy()

    @Slot(int, str, str)
    def _on_failed(self, job_id, kind, message):
        if self._latest.get(kind) == job_id:
            self.failed.emit(job_id, kind, message)
        self._emit_busy()

    @Slot(int, str, int, int)
    def _on_progress(self, job_id, kind, done, total):
        if self._latest.get(kind) == job_id:
            self.progress.emit(job_id, kind, done, total)

    # -- worker thread -----------------------------------------------------------------------
    def _next_job(self) -> Job | None:
        with self._lock:
            self._running = None
            while not self._queue and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            self._running = self._queue.pop(0)
            return self._running
