"""Corpus recording, side by side in one run, on the bundled char-LSTM over Python source from the
installed packages (site-packages ``.py`` files, sorted, until ``--chars`` characters):

  (a) record / bare    tokens/s of ``seqscope trace --corpus`` (two probes, float16, to disk, with
                       the streaming summaries) ÷ tokens/s of the bare forward pass
                       (``engine.run`` with no probes) over the same batches; target >= 0.7
  (b) peak RAM         peak RSS of the recording process (it does not grow with the corpus: one
                       batch of arrays, the summaries and HDF5's chunk caches)
  (c) Ray 2 / 1        tokens/s with 2 Ray workers ÷ with 1 worker (same corpus, same shards)

(a) and (b) run in one fresh process (``--child``), after a short warm-up recording there (numba's
kernels compiled, the model loaded): 256 sequences at a time, the bare forward pass over their
batches and then the same sequences recorded by the recorder's own loop (run with the probes;
cast, append, summaries, a commit every second in its writer thread; reading and tokenizing the
corpus are counted in the recording), so load from other work on the machine hits both alike.  Ray runs are timed whole, including Ray's and the workers' start.  If
``benchmarks/corpus_queries.py`` exists with ``bench_queries(path) -> dict``, it is called on
the recorded file and its numbers are printed too.

    .venv/bin/python benchmarks/corpus.py                       # 5 million characters (~15 min)
    .venv/bin/python benchmarks/corpus.py --chars 500000 --no-ray
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = str(ROOT / "assets/models/char-lstm-python")


def build_corpus(folder: Path, chars: int) -> int:
    """Link site-packages .py files into ``folder`` until ``chars`` characters; returns the count."""
    site = Path(sysconfig.get_paths()["purelib"])
    total = 0
    for k, p in enumerate(sorted(site.rglob("*.py"))):
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if not 1000 <= size <= 200_000:
            continue
        (folder / f"{k:06d}_{p.name}").symlink_to(p)
        total += size
        if total >= chars:
            break
    return total


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> dict:
    """One contender, in this (fresh) process."""
    import torch

    import engine
    from engine.corpus.record import RecordOptions, batches, open_output, record, record_sequences, resolve_probes
    from engine.corpus.sources import Corpus, sequences
    from engine.run import run

    corpus = Corpus(spec["corpus"], glob="*.py")
    opts = RecordOptions(probes=spec["probes"], dtype="float16", seq_len=spec["seq_len"])
    out = Path(spec["out"])
    if spec["kind"] == "ray":
        from engine.corpus.scale_out import record_ray

        t0 = time.perf_counter()
        result = record_ray(MODEL, corpus, out, opts, workers=spec["workers"])  # includes Ray's start
        return {"tokens": result.tokens, "seconds": time.perf_counter() - t0}
    model = engine.load(MODEL, device=spec.get("device"))
    sync = torch.cuda.synchronize if torch.device(model.device).type == "cuda" else (lambda: None)
    warm = RecordOptions(probes=spec["probes"], dtype="float16", seq_len=spec["seq_len"], max_tokens=20_000)
    record(model, corpus, out.with_name("warm.h5"), warm)  # compile, load, touch the files
    base_rss = rss_mb()
    # side by side, a group of sequences at a time (a shard: 256 sequences, 8 batches): the bare
    # forward pass over the group's batches, then the group recorded by the recorder's own loop
    # (run with the probes; cast, append, summaries and commits in its writer thread)
    specs = resolve_probes(model, opts.probes)
    names = [s.name for s in specs]
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    fh = open_output(partial, model, specs, opts, opts.fingerprint(corpus, model, names), resume=False)
    bare = rec = 0.0
    tokens = 0
    seqs = iter(sequences(corpus, model, seq_len=opts.seq_len))
    while True:
        t0 = time.perf_counter()
        group = list(itertools.islice(seqs, opts.shard_sequences))  # reading and tokenizing: the recording's
        rec += time.perf_counter() - t0
        if not group:
            break
        t0 = time.perf_counter()
        for batch in batches(group, opts):
            run(model, [s.ids for s in batch], probes=[], max_bytes=float("inf"))
        sync()
        t1 = time.perf_counter()
        record_sequences(fh, model, group, names, opts, check=lambda: None)
        rec += time.perf_counter() - t1
        bare += t1 - t0
        tokens += sum(len(s) for s in group)
    t0 = time.perf_counter()
    fh.commit(complete=True)
    fh.close()
    os.replace(partial, out)
    rec += time.perf_counter() - t0
    return {"tokens": tokens, "bare_seconds": bare, "record_seconds": rec, "base_rss_mb": base_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env)
    if r.returncode:
        sys.exit(f"{spec['kind']} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=5_000_000, help="corpus size in characters (default 5 million)")
    ap.add_argument("--probes", nargs="+", default=["layers.0.h", "layers.1.h"])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    ap.add_argument("--device", default="cpu", help="where the model runs for (a) and (b): cpu, cuda")
    ap.add_argument("--keep", metavar="FOLDER", help="write the recorded corpus.h5 here and keep it")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        chars = build_corpus(src, args.chars)
        out_dir = Path(args.keep) if args.keep else tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        base = {"corpus": str(src), "probes": args.probes, "seq_len": args.seq_len, "device": args.device}
        print(f"corpus: {len(list(src.iterdir()))} site-packages .py files, {chars:,} bytes; probes "
              f"{' '.join(args.probes)}, float16, --seq-len {args.seq_len}; {os.cpu_count()} CPUs; model on "
              f"{args.device}", flush=True)
        rec = run_child({**base, "kind": "record", "out": str(out_dir / "corpus.h5")})
        bare_rate, rec_rate = rec["tokens"] / rec["bare_seconds"], rec["tokens"] / rec["record_seconds"]
        size = (out_dir / "corpus.h5").stat().st_size / 2**20
        results = {"tokens": rec["tokens"], "bare_tokens_per_s": bare_rate, "record_tokens_per_s": rec_rate,
                   "record_over_bare": rec_rate / bare_rate, "peak_rss_mb": rec["peak_rss_mb"],
                   "rss_before_mb": rec["base_rss_mb"], "file_mb": size}
        print(f"bare forward   {bare_rate:10,.0f} tokens/s   ({rec['tokens']:,} tokens in {rec['bare_seconds']:.1f} s)")
        print(f"recording      {rec_rate:10,.0f} tokens/s   ({rec['record_seconds']:.1f} s, {size:,.0f} MB file)")
        print(f"(a) record / bare = {rec_rate / bare_rate:.2f}   (target >= 0.7)")
        print(f"(b) peak RSS {rec['peak_rss_mb']:,.0f} MB (model loaded and warmed up: {rec['base_rss_mb']:,.0f} MB)",
              flush=True)
        if not args.no_ray:
            one = run_child({**base, "kind": "ray", "workers": 1, "out": str(tmp / "ray1.h5")})
            two = run_child({**base, "kind": "ray", "workers": 2, "out": str(tmp / "ray2.h5")})
            r1, r2 = one["tokens"] / one["seconds"], two["tokens"] / two["seconds"]
            results.update(ray1_tokens_per_s=r1, ray2_tokens_per_s=r2, ray2_over_ray1=r2 / r1)
            print(f"Ray, 1 worker  {r1:10,.0f} tokens/s   ({one['seconds']:.1f} s with Ray's start)")
            print(f"Ray, 2 workers {r2:10,.0f} tokens/s   ({two['seconds']:.1f} s)")
            print(f"(c) Ray 2 workers / 1 worker = {r2 / r1:.2f}", flush=True)
        queries = ROOT / "benchmarks" / "corpus_queries.py"
        if queries.exists():
            spec = importlib.util.spec_from_file_location("corpus_queries", queries)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if hasattr(module, "bench_queries"):
                q = module.bench_queries(out_dir / "corpus.h5")
                results["queries"] = q
                for key, value in q.items():
                    print(f"queries: {key} = {value}")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
