"""Run corpus cases in worker processes and report, per case, what went wrong.

Cases are split into shards, one worker process each (``worker.py``), which runs its cases one
after another and writes a result line per case.  This process watches the workers: a worker
that dies in the middle of a case (a segfault, an abort) has crashed *that* case; a case that
outlives its time limit by ``GRACE`` seconds (a hang SIGALRM cannot interrupt, e.g. inside C
code) is a hang.  Either way the worker is replaced and goes on with the cases after it.

    python tests/bad_inputs/harness.py CORPUS_FOLDER [--workers 2] [--only SUBSTRING]
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bad_inputs"

from .checks import case_limit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "worker.py"
GRACE = 8.0  # seconds past a case's limit before its worker is killed as hung
START_SECONDS = 120.0  # a worker that starts no case in this long is broken


class _Shard:
    """One worker process and the cases it still has to run."""

    def __init__(self, manifest: Path, ids: list[str], limits: dict[str, float], scratch: Path, n: int,
                 grace: float = GRACE):
        self.manifest, self.todo, self.limits, self.scratch, self.n = manifest, list(ids), limits, scratch, n
        self.grace = grace
        self.results: dict[str, dict] = {}
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        tag = f"{self.n}-{self.starts}"
        ids_file = self.scratch / f"ids-{tag}.json"
        ids_file.write_text(json.dumps(self.todo))
        self.out = self.scratch / f"results-{tag}.jsonl"
        self.out.write_text("")
        self.err = open(self.scratch / f"stderr-{tag}.txt", "w+")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
                   QT_QPA_PLATFORM="offscreen", PYTHONFAULTHANDLER="")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(self.manifest), str(ids_file), str(self.out)],
                                     cwd=self.scratch, env=env, stdout=subprocess.DEVNULL, stderr=self.err,
                                     start_new_session=True)
        self.offset = 0
        self.current = None  # (id, when it started)
        self.launched = time.monotonic()

    def poll(self) -> bool:
        """Read new results; handle a crash or a hang.  False when the shard is done."""
        with open(self.out, encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            rec = json.loads(line)
            if "start" in rec:
                self.current = (rec["start"], time.monotonic())
            else:
                self.results[rec["id"]] = rec
                self.todo.remove(rec["id"])
                self.current = None
        rc = self.proc.poll()
        now = time.monotonic()
        if rc is None:
            if self.current and now - self.current[1] > self.limits[self.current[0]] + self.grace:
                self._fail_current(f"hang: killed after {now - self.current[1]:.0f} s (SIGALRM could not stop it)")
                self._kill()
                return self._restart()
            if not self.current and not self.results and now - self.launched > START_SECONDS:
                self._kill()
                self._fail_all("the worker started no case in time")
                return False
            return True
        if self.current:
            why = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            self._fail_current(f"crash: the process died ({why}): {self._stderr_tail()}")
            return self._restart()
        if self.todo:
            self._fail_all(f"the worker exited ({rc}) before running its cases: {self._stderr_tail()}")
        return False

    def _restart(self) -> bool:
        self.err.close()
        if not self.todo:
            return False
        self.start()
        return True

    def _fail_current(self, why: str):
        cid = self.current[0]
        self.results[cid] = {"id": cid, "problems": [why], "outcome": why.split(":")[0], "message": ""}
        self.todo.remove(cid)
        self.current = None

    def _fail_all(self, why: str):
        for cid in list(self.todo):
            self.results[cid] = {"id": cid, "problems": [why], "outcome": "not run", "message": ""}
        self.todo.clear()

    def _kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def _stderr_tail(self) -> str:
        self.err.flush()
        self.err.seek(0)
        lines = [ln for ln in self.err.read().splitlines() if ln.strip()]
        return " | ".join(lines[-2:])[-300:] or "(nothing on stderr)"


def run_corpus(manifest, workers: int = 2, only=None, grace: float = GRACE) -> list[dict]:
    """Run the manifest's cases (those whose id contains ``only``, or the ids listed in it)
    and return one result per case: the case's fields plus ``problems`` (empty: it held)."""
    manifest = Path(manifest)
    cases = json.loads(manifest.read_text())["cases"]
    if isinstance(only, str):
        cases = [c for c in cases if only in c["id"]]
    elif only is not None:
        cases = [c for c in cases if c["id"] in set(only)]
    limits = {c["id"]: case_limit(c) for c in cases}
    # deal the slow kinds round-robin so that every worker gets its share
    ordered = sorted(cases, key=lambda c: (c["entry"] != "cli_subprocess", c["id"]))
    with tempfile.TemporaryDirectory(prefix="seqscope-corpus-run-") as scratch:
        shards = [_Shard(manifest, [c["id"] for c in ordered[k::workers]], limits, Path(scratch), k, grace)
                  for k in range(workers)]
        shards = [s for s in shards if s.todo]
        for s in shards:
            s.start()
        active = list(shards)
        while active:
            time.sleep(0.05)
            active = [s for s in active if s.poll()]
        results = {}
        for s in shards:
            results.update(s.results)
    out = []
    for c in cases:
        r = results.get(c["id"], {"problems": ["no result"], "outcome": "lost"})
        out.append({**c, **r})
    return out


# -- reporting --------------------------------------------------------------------------------------


def cause(problem: str) -> str:
    """A failure's cause, for grouping: 'timeout', 'raised RecursionError', 'memory', …"""
    head = problem.split(":")[0]
    if head.startswith("raised "):
        return head
    return head.split(" (")[0]


def failure_table(results: list[dict]) -> str:
    failed = [r for r in results if r["problems"]]
    if not failed:
        return "no failures"
    rows = [("case", "class", "entry", "what went wrong")]
    rows += [(r["id"], r["cls"], r["entry"], "; ".join(r["problems"])[:160]) for r in failed]
    widths = [min(48, max(len(row[k]) for row in rows)) for k in range(3)]
    lines = ["  ".join(cell.ljust(w)[:max(w, 1)] if k < 3 else cell for k, (cell, w) in
                       enumerate(zip(row, widths + [0]))) for row in rows]
    return "\n".join(lines)


def by_cause(results: list[dict]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in results:
        for p in r["problems"]:
            groups.setdefault(cause(p), []).append(r["id"])
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def summary(results: list[dict]) -> str:
    failed = sum(1 for r in results if r["problems"])
    lines = [f"{len(results)} cases, {failed} failed"]
    for name, ids in by_cause(results).items():
        lines.append(f"  {len(ids):4d}  {name}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default=None, help="run the cases whose id contains this")
    ap.add_argument("--json", default=None, help="write every result to this file")
    args = ap.parse_args(argv)
    manifest = Path(args.corpus) / "manifest.json"
    used = Path(args.corpus) / ".harness-ran"
    if used.exists():  # output cases overwrite what they find: a second run would see other files
        print(f"{args.corpus} was run once already; generate a fresh corpus (a new folder)", file=sys.stderr)
        return 2
    if not manifest.exists():
        from .generate import generate

        generate(args.corpus)
    t0 = time.monotonic()
    used.touch()
    results = run_corpus(manifest, args.workers, args.only)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(failure_table(results))
    print(summary(results))
    print(f"{time.monotonic() - t0:.1f} s")
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
