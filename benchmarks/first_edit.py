"""The first edit in a fresh process against a later one (target: ratio <= 2).

    nice .venv/bin/python benchmarks/first_edit.py [--repeats 3] [--cache-dir DIR]

Every measurement runs in a new interpreter, the way a user meets it: a new window, a new
``seqscope trace`` command.  numba's on-disk cache lives in ``--cache-dir`` (default: a new
temporary folder), so the first process below starts cold and compiles; the ones after it
find the cache.

  engine.run     load the model; its sample run plainly (the first run, then the median of three
                 more), then with an Intervention (the first, then the median of five more with
                 other values): first ÷ later for each.  The LSTM needs numba only for edits,
                 Mamba's scan runs in every run.
                 Once as a library user meets it (numba is imported and its cached machine
                 code read on the first edit) and once with ``warm_up()`` called when the model
                 opens, as the window does on its worker thread.
  seqscope trace the README's command with ``--intervene``, wall time of the whole command,
                 against the same command without it (what the intervention adds).

Models: the bundled char-LSTM (its edited steps run in numba's compiled stretch) on its
sample, and the bundled Mamba (the compiled selective scan) on its sample.  Times are medians
over ``--repeats`` fresh processes; the cold row is the first process on an empty cache.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
CASES = {  # model folder, its sample, an edit the compiled path runs
    "char-lstm": (MODELS / "char-lstm-python", MODELS / "char-lstm-python" / "sample.py",
                  {"probe": "layers.0.c", "op": "add", "value": 2.0, "positions": {"start": 10, "stop": None}, "units": [37]}),
    "mamba": (MODELS / "selective-ssm-recall", MODELS / "selective-ssm-recall" / "sample.txt",
              {"probe": "layers.0.y", "op": "scale", "value": 0.5, "units": [3]}),
}


def child(case: str, warm: bool) -> dict:
    """In a fresh process: the timings of one engine.run session (seconds)."""
    import engine
    from engine.models.kernel_warmup import warm_up

    folder, sample, spec = CASES[case]
    t0 = time.perf_counter()
    model = engine.load(folder)
    text = sample.read_text(encoding="utf-8")
    if warm:
        warm_up()
    t1 = time.perf_counter()

    def timed(*interventions):
        start = time.perf_counter()
        engine.run(model, text, interventions=list(interventions))
        return time.perf_counter() - start

    def edit(value):
        return engine.Intervention.from_dict(dict(spec, value=value))

    first_run = timed()
    later_run = statistics.median(timed() for _ in range(3))
    first_edit = timed(edit(spec["value"]))
    later_edit = statistics.median(timed(edit(spec["value"] + k)) for k in range(1, 6))
    return {"open": t1 - t0, "first_run": first_run, "later_run": later_run, "first": first_edit,
            "later": later_edit, "chars": len(text)}


def fresh(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def session(case: str, warm: bool, env: dict) -> dict:
    _, out = fresh([__file__, "--child", case] + (["--warm"] if warm else []), env)
    return json.loads(out.strip().splitlines()[-1])


def cli(case: str, intervene: bool, env: dict, out_dir: Path) -> float:
    folder, sample, edit = CASES[case]
    args = ["-m", "engine.cli", "trace", str(folder), "--input", str(sample), "--no-progress",
            "-o", str(out_dir / f"{case}.h5")]
    if intervene:
        args += ["--intervene", json.dumps(edit)]
    return fresh(args, env)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per row (default 3)")
    p.add_argument("--cache-dir", help="numba's cache folder (default: a new temporary one, so the "
                                       "first process compiles)")
    p.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    p.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warm)), flush=True)
        return

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or str(Path(tmp) / "numba-cache")
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        print(f"numba cache: {cache}; medians of {args.repeats} fresh processes; seconds\n")
        print(f"{'engine.run':<14} {'model':<10} {'chars':>6} {'first run':>10} {'later run':>10} {'ratio':>6}"
              f" {'first edit':>11} {'later edit':>11} {'ratio':>6}")
        for case in CASES:
            rows = [("cold cache", [session(case, False, env)])]
            for warm in (False, True):
                rows.append(("warm_up()" if warm else "cached", [session(case, warm, env) for _ in range(args.repeats)]))
            for label, runs in rows:
                m = {k: statistics.median(r[k] for r in runs) for k in ("first_run", "later_run", "first", "later")}
                print(f"{label:<14} {case:<10} {runs[0]['chars']:>6} {m['first_run']:>10.3f} {m['later_run']:>10.3f}"
                      f" {m['first_run'] / m['later_run']:>5.1f}x {m['first']:>11.3f} {m['later']:>11.3f}"
                      f" {m['first'] / m['later']:>5.1f}x", flush=True)
        print(f"\n{'seqscope trace':<14} {'model':<10} {'plain':>8} {'--intervene':>12} {'ratio':>7}")
        for case in CASES:
            plain = statistics.median(cli(case, False, env, Path(tmp)) for _ in range(args.repeats))
            edited = statistics.median(cli(case, True, env, Path(tmp)) for _ in range(args.repeats))
            print(f"{'cached':<14} {case:<10} {plain:>8.2f} {edited:>12.2f} {edited / plain:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
