"""Runs corpus cases one after another in this process and writes one JSON line per case.

    python worker.py MANIFEST IDS_JSON RESULTS_JSONL

For each case: a ``{"start": id}`` line, then the case under a time limit (SIGALRM), with its
peak memory measured (``/proc/self/clear_refs`` resets VmHWM), then ``{"id": ..., "problems":
[...]}``.  A crash or a hang that SIGALRM cannot interrupt is seen by the parent (``harness``):
a start line without its result.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bad_inputs.checks import (Snapshot, case_limit, memory_bound, message_problem,  # noqa: E402
                               peak_since_reset, reset_peak)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")
TEXT = "abcde fghij"
PROBE = "layers.0.c"
EXTRA_ADDRESS_SPACE = 3 << 30  # a case may map this much more than the warmed-up worker


class CaseTimeout(BaseException):
    """Raised by SIGALRM inside a case that runs too long."""


def _alarm(signum, frame):
    raise CaseTimeout()


class Worker:
    def __init__(self, root: Path):
        import torch

        import engine
        import engine.cli  # noqa: F401
        import engine.hdf5  # noqa: F401
        import engine.loading  # noqa: F401

        torch.set_num_threads(1)
        self.root = root
        self.engine = engine
        self.model = engine.load(root / "pt-zip/valid.pt", device="cpu")
        self.trace = engine.run(self.model, TEXT)
        self.compiled = False
        engine.load(root / "families/mamba-valid", device="cpu")
        self.session = None
        signal.signal(signal.SIGALRM, _alarm)
        # what is alive now stays alive: a full collection then scans only what a case made
        # (0.3 s a collection otherwise, with torch's heap, twice a case)
        gc.collect()
        gc.freeze()

    # -- entries --------------------------------------------------------------------------------
    def p(self, rel: str) -> Path:
        return self.root / rel

    def load(self, case):
        a = case["args"]
        config = a.get("config")
        if a.get("config_file"):
            config = str(self.p(a["config_file"]))
        return self.engine.load(self.p(case["path"]), device="cpu", config=config)

    def load_trace(self, case):
        return self.engine.load_trace(self.p(case["path"]))

    def _run_interventions(self, ivs):
        return self.engine.run(self.model, TEXT, interventions=ivs)

    def interventions_json(self, case):
        from engine.interventions import interventions_from_json

        return self._run_interventions(interventions_from_json(case["args"]["text"]))

    def load_interventions(self, case):
        from engine.interventions import load_interventions

        return self._run_interventions(load_interventions(self.p(case["path"])))

    def numeric(self, case):
        from engine.tokenizers import read_numeric

        return read_numeric(self.p(case["path"]))

    def text(self, case):
        from engine.cli import _read_inputs

        return _read_inputs(self.model, [str(self.p(case["path"]))])

    def project(self, case):
        """What File ▸ Open project does: read the file, load its model, restore the session; a
        failure must leave the model the session had."""
        import engine
        from workbench.session import Session

        if self.session is None:
            self.session = Session()
        keep = object()
        self.session.model = keep
        try:
            project = Session.read_project(self.p(case["path"]))
            model = engine.load(project.model, device="cpu") if project.model else None
            project.check_fits(model)
            self.session.apply_project(project, model)
        except BaseException:
            if self.session.model is not keep:
                self.extra_problems.append("the session lost its model after a failed project")
            raise

    def save_trace(self, case, target):
        return self.engine.save_trace(self.trace, target)

    def save_model(self, case, target):
        from engine.loading import save_model

        return save_model(self.model, target)

    def save_interventions(self, case, target):
        from engine.interventions import Intervention, save_interventions

        return save_interventions(target, [Intervention(PROBE, "zero")])

    def export_lstmvis(self, case, target):
        from engine.hdf5 import export_lstmvis

        return export_lstmvis(self.trace, target)

    def cli_trace_out(self, case, target):
        return self._cli(["trace", str(self.p("pt-zip/valid.pt")), "--text", TEXT, "-o", str(target)])

    def cli(self, case):
        return self._cli([a.replace("{root}", str(self.root)) for a in case["args"]["argv"]])

    def _cli(self, argv):
        from engine.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        return _cli_outcome(rc, err.getvalue())

    def cli_subprocess(self, case):
        argv = [a.replace("{root}", str(self.root)) for a in case["args"]["argv"]]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, errors="replace", timeout=case_limit(case) - 2)
        if done.returncode < 0:
            raise CrashedChild(f"the seqscope process died of signal {-done.returncode}: "
                               + _last_line(done.stderr))
        return _cli_outcome(done.returncode, done.stderr)

    def selftest(self, case, target=None):
        """Deliberately broken behaviour, to prove the harness notices each kind of failure."""
        do = case["args"]["do"]
        if do == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif do == "hang":
            time.sleep(60)
        elif do == "hang_uninterruptible":
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(60)
        elif do == "alloc":
            block = bytearray(600 << 20)
            block[::4096] = b"x" * len(block[::4096])
        elif do == "raise":
            raise ValueError("an internal error")
        elif do == "traceback_message":
            raise self.engine.LoadError('Traceback (most recent call last):\n  File "x.py", line 1')
        elif do == "marker":
            Path(self.root / "markers" / "selftest").write_text("ran")
        elif do == "clobber":
            Path(target).write_text("clobbered")
            raise self.engine.SeqScopeError("could not write")
        elif do == "accept":
            return None
        elif do == "refuse":
            raise self.engine.LoadError("refused")

    def compile_interventions(self):
        """Compile what a first intervention compiles (numba), once, outside any case's time."""
        if not self.compiled:
            iv = self.engine.Intervention
            self.engine.run(self.model, TEXT, interventions=[iv(PROBE, "set", 1.0, positions=[1, 2])])
            self.engine.run(self.model, TEXT, interventions=[iv(PROBE, "add", 1.0, units=[1])])
            gc.collect()
            gc.freeze()
            self.compiled = True

    # -- one case --------------------------------------------------------------------------------
    def run_case(self, case) -> dict:
        entry = case["entry"]
        if entry in ("interventions_json", "load_interventions", "cli", "project", "cli_trace_out"):
            self.compile_interventions()
        fn = getattr(self, entry)
        self.extra_problems: list[str] = []
        target = snap = None
        if "target" in case["args"]:
            target = self.p(case["args"]["target"])
            snap = Snapshot.take(target)
            fn_call = lambda: fn(case, target)  # noqa: E731
        else:
            fn_call = lambda: fn(case)  # noqa: E731
        markers_before = set(os.listdir(self.root / "markers"))
        fsize = case["args"].get("fsize")
        limit = case_limit(case)
        gc.collect()
        base = reset_peak()
        t0 = time.monotonic()
        outcome, exc, result = "ok", None, None
        try:
            if fsize:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                result = fn_call()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                if fsize:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            if isinstance(result, CLIOutcome):
                outcome, exc = result.kind, result.error
        except CaseTimeout:
            outcome, exc = "timeout", None
        except BaseException as e:  # noqa: BLE001 - every exception is a finding
            outcome, exc = "raised", e
        seconds = time.monotonic() - t0
        # free what the case left (h5py objects of a failed write, a traceback's frames) now, so
        # that a crash while freeing them is blamed on this case, not on the next one
        message, exc_type = _first_line(exc), type(exc).__name__
        problems = judge(case, outcome, exc, self.engine, limit)
        exc = result = None  # noqa: F841
        gc.collect()
        growth = peak_since_reset() - base
        problems = list(self.extra_problems) + problems
        bound = memory_bound(case)
        if growth > bound:
            problems.append(f"memory: peak RSS grew {growth / 2**20:.0f} MB (bound {bound / 2**20:.0f} MB)")
        new_markers = set(os.listdir(self.root / "markers")) - markers_before
        if new_markers:
            problems.append("CODE EXECUTED: the file created " + ", ".join(sorted(new_markers)))
        if snap is not None:
            problems += snap.check(target, failed=outcome != "ok", case=case)
        return {"id": case["id"], "problems": problems, "seconds": round(seconds, 3), "growth": growth,
                "outcome": outcome if outcome != "raised" else exc_type, "message": message}


class CrashedChild(Exception):
    pass


class CLIOutcome:
    def __init__(self, kind: str, error=None):
        self.kind, self.error = kind, error


class CLIError(Exception):
    """Stands for the message ``seqscope: error: ...`` a command printed (exit status 2)."""


def _cli_outcome(rc: int, stderr: str) -> CLIOutcome:
    bad = [m for m in ("Traceback (most recent call last)", "Exception ignored", "Segmentation fault",
                       "Fatal Python error") if m in stderr]
    if bad:
        return CLIOutcome("raised", RuntimeError(f"the command printed '{bad[0]}': {_last_line(stderr)}"))
    if rc == 0:
        return CLIOutcome("ok")
    lines = [ln for ln in stderr.splitlines() if ln.startswith("seqscope: error:")]
    if rc == 2 and lines:
        return CLIOutcome("documented", CLIError("\n".join(stderr[stderr.index(lines[0]) + 16:].strip().splitlines())))
    return CLIOutcome("raised", RuntimeError(f"exit status {rc} without a 'seqscope: error:' line: "
                                             f"{_last_line(stderr)}"))


def _first_line(exc) -> str:
    if exc is None:
        return ""
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(nothing on stderr)"


#: the documented errors each entry may raise (any other exception is a finding)
def allowed_errors(entry: str, engine):
    if entry == "load":
        return (engine.LoadError,)
    if entry in ("numeric", "text"):
        return (engine.InputError,)
    return (engine.SeqScopeError,)


def judge(case, outcome, exc, engine, limit) -> list[str]:
    """What went wrong in one case, as short lines (empty: it held)."""
    expect = case["expect"]
    if outcome == "timeout":
        return [f"timeout: still running after {limit:.0f} s"]
    if outcome == "ok":
        return ["accepted: expected a documented error"] if expect == "error" else []
    if outcome == "documented":  # a command line that printed its error
        problems = [] if expect != "ok" else [f"valid input refused: {_first_line(exc)}"]
        why = message_problem(str(exc))
        return problems + ([f"message: {why}"] if why else [])
    if isinstance(exc, MemoryError):
        return [f"memory: MemoryError {_first_line(exc)}"]
    if isinstance(exc, CrashedChild):
        return [f"crash: {exc}"]
    if isinstance(exc, engine.Cancelled) or not isinstance(exc, allowed_errors(case["entry"], engine)):
        return [f"raised {type(exc).__name__}: {_first_line(exc)}"]
    problems = [] if expect != "ok" else [f"valid input refused: {_first_line(exc)}"]
    why = message_problem(str(exc))
    return problems + ([f"message: {why}"] if why else [])


def main(argv) -> int:
    manifest, ids_file, results_file = argv
    data = json.loads(Path(manifest).read_text())
    by_id = {c["id"]: c for c in data["cases"]}
    ids = json.loads(Path(ids_file).read_text())
    worker = Worker(Path(data["root"]))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    from bad_inputs.checks import address_space

    resource.setrlimit(resource.RLIMIT_AS, (address_space() + EXTRA_ADDRESS_SPACE, hard))
    with open(results_file, "a", encoding="utf-8") as out:
        for cid in ids:
            out.write(json.dumps({"start": cid}) + "\n")
            out.flush()
            result = worker.run_case(by_id[cid])
            out.write(json.dumps(result) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
