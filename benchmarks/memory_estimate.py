"""A run's memory estimate (``engine.budget.estimate_run_bytes``) against what the process
really grows by, on the bundled models; and how fast a run past its budget is refused.

    .venv/bin/python benchmarks/memory_estimate.py            # a few minutes on a busy machine
    .venv/bin/python benchmarks/memory_estimate.py --quick    # smaller runs

Each case runs in a fresh process (peak memory is the process's own high-water mark, reset
through ``/proc/self/clear_refs`` just before the run), Linux only.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r'''
import ctypes, gc, sys, time
import numpy as np, torch
sys.path.insert(0, {root!r})
import engine
from engine.budget import RunTooLarge, estimate_run_bytes, format_bytes
torch.set_num_threads(1)
M = {root!r} + "/assets/models/"
kind, n, probes, cached = {kind!r}, {n}, {probes!r}, {cached}

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

if kind == "refuse":
    model = engine.load(M + "char-lstm-python", device="cpu")
    t0 = time.monotonic()
    try:
        engine.run(model, "x = [1, 2]\n" * (n // 11), max_bytes="2G")
    except RunTooLarge as exc:
        print(f"refused {{n:,}} tokens in {{time.monotonic() - t0:.2f}} s: {{format_bytes(exc.estimate.total)}} "
              f"estimated, over a 2.0 GB budget")
    sys.exit()
if kind == "gru":
    model = engine.load(M + "gru-dyck", device="cpu")
    x = "(()(()))" * (n // 8)
elif kind == "mamba":
    model = engine.load(M + "selective-ssm-recall", device="cpu")
    model.scan = "torch"
    x = np.random.default_rng(0).integers(0, model.vocab_size, n)
else:
    model = engine.load(M + "char-lstm-python", device="cpu")
    x = (open(M + "char-lstm-python/sample.py").read() * (n // 3000 + 1))[:n]
cache = engine.PrefixCache() if cached else None
engine.run(model, x[:300], probes)  # warm-up
if cached:
    engine.run(model, x, probes, cache=cache)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
est = estimate_run_bytes(model, len(x), probes, cache=cache)
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
ivs = [engine.Intervention(model.layer_output_probe(0), "add", 1.0, positions=[len(x) // 2])] if cached else []
trace = engine.run(model, x, probes, interventions=ivs, cache=cache)
grown = status("VmHWM") - before
arrays = sum(a.nbytes for a in trace.arrays.values())
print(f"{{kind:<6}} {{len(x):>7,}} tokens {{str(probes):<9}} {{'re-run' if cached else 'run':<6}} arrays "
      f"{{format_bytes(arrays):>9}} (estimated {{format_bytes(est.arrays):>9}}); peak growth "
      f"{{format_bytes(grown):>9}}, estimated {{format_bytes(est.total):>9}} ({{est.total / grown:.2f}}x)")
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller runs")
    args = p.parse_args(argv)
    k = 4 if args.quick else 1
    cases = [("lstm", 100_000 // k, "*", False), ("lstm", 100_000 // k, "logits", False),
             ("lstm", 40_000 // k, "*", True), ("gru", 100_000 // k, "*", False),
             ("mamba", 20_000 // k, "*", False), ("refuse", 1_000_000, "*", False)]
    for kind, n, probes, cached in cases:
        code = CASE.format(root=str(ROOT), kind=kind, n=n, probes=probes, cached=cached)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
