"""RWKV-4 speed, side by side in one process: SeqScope's instrumented forward pass against
``transformers``' CPU forward of the same weights (``rwkv_linear_attention_cpu``: a Python loop
over time per layer), and against a token-by-token loop.

    nice .venv/bin/python benchmarks/rwkv.py             # T = 1024 and 8192 (a few minutes)
    nice .venv/bin/python benchmarks/rwkv.py --quick     # T = 1024 only

Model: 4 layers, hidden 256 (attention width 256, feed-forward 1024), vocabulary 1024,
batch 1, random weights (``rescale_every=0``).  Contenders (median of interleaved repeats,
wall time):

  hf          transformers RwkvForCausalLM.forward (use_cache=False): logits
  bare        ours, logits only (the default WKV loop: numba when installed, else torch)
  bare-torch  ours, logits only, with the plain torch loop (the reference path)
  probes      ours, every per-token probe (embed, att_in, r, k, v, w, u, wkv, att, ffn_in, ffn_k,
              ffn_r, ffn, out, logits), not the state and not the attention
  +state      the same plus every layer's WKV state (num, den, max per channel)
  attn        logits plus every layer's implicit attention for a 256 x 256 window (the last
              256 rows and columns)
  steps       transformers stepping one token at a time with its state (a per-step loop;
              T = 1024 only)
  rerun       an intervention at step 0.9 T re-run from the prefix cache (all per-token probes)

Ratios printed: hf / bare, probes / bare and +state / bare, steps / bare, bare-torch / bare
(what numba buys).  Threads: torch and numba both use ``--threads`` (default 1: the machine is
shared; the comparison is like for like).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import Intervention, PrefixCache, Span  # noqa: E402
from engine.models.rwkv import from_transformers, numba_available  # noqa: E402

PER_TOKEN = ["embed", "logits"] + [f"layers.*.{s}" for s in ("att_in", "r", "k", "v", "w", "u", "wkv", "att",
                                                              "ffn_in", "ffn_k", "ffn_r", "ffn", "out")]


def build(seed=0):
    from transformers import RwkvConfig, RwkvForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = RwkvConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, context_length=8192, rescale_every=0)
    m = RwkvForCausalLM(cfg).eval()
    with torch.no_grad():  # the init's embeddings are ~1e-4: give the layers something to do
        m.rwkv.embeddings.weight.normal_(0, 1)
    return m


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="T = 1024 only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if numba_available():
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    hf = build()
    ours = from_transformers(hf)
    ref = from_transformers(hf, scan="torch")
    print(f"torch {torch.__version__}, threads {args.threads}, scan {ours.scan}"
          + ("" if numba_available() else " (numba not installed)"))
    warm = np.arange(300) % 1024
    engine.run(ours, warm, probes="*")  # compile the numba kernels, warm the allocator
    rows = []
    for T in [1024] if args.quick else [1024, 8192]:
        ids = np.random.default_rng(T).integers(0, 1024, T)
        x = torch.tensor(ids[None])
        ours.attention_window = ((T - 256, T), (T - 256, T))
        iv = Intervention("layers.0.w", "scale", 0.5, positions=Span(int(0.9 * T)), units=[3])
        cache = PrefixCache()
        engine.run(ours, ids, probes=PER_TOKEN, cache=cache)

        def hf_forward():
            with torch.no_grad():
                hf(x, use_cache=False)

        def hf_steps():
            with torch.no_grad():
                state = None
                for t in range(T):
                    state = hf(x[:, t:t + 1], state=state, use_cache=True).state

        rerun_state = {"v": 0.5}

        def rerun():  # a slider move: same intervention, new value, from the cache
            rerun_state["v"] = 1.0 - rerun_state["v"]
            engine.run(ours, ids, probes=PER_TOKEN, cache=cache,
                       interventions=[Intervention(iv.probe, "scale", rerun_state["v"], positions=iv.positions,
                                                   units=iv.units)])

        contenders = {
            "hf": hf_forward,
            "bare": lambda: engine.run(ours, ids, probes="logits"),
            "bare-torch": lambda: engine.run(ref, ids, probes="logits"),
            "probes": lambda: engine.run(ours, ids, probes=PER_TOKEN),
            "+state": lambda: engine.run(ours, ids, probes=PER_TOKEN + ["layers.*.state"]),
            "attn": lambda: engine.run(ours, ids, probes=["logits", "layers.*.attn"]),
            "rerun": rerun,
        }
        if T <= 1024:
            contenders["steps"] = hf_steps
        times = {k: [] for k in contenders}
        reps = args.repeats if T <= 1024 else max(1, args.repeats - 1)
        for _ in range(reps):
            for k, fn in contenders.items():
                times[k].append(timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((T, med))
        print(f"\nT = {T}  (median of {reps})")
        for k, v in med.items():
            print(f"  {k:<11} {v * 1e3:9.1f} ms")
        b = med["bare"]
        print(f"  hf / bare          {med['hf'] / b:6.2f}")
        print(f"  probes / bare      {med['probes'] / b:6.2f}")
        print(f"  +state / bare      {med['+state'] / b:6.2f}")
        print(f"  attn / bare        {med['attn'] / b:6.2f}   (256 x 256 window, 4 layers)")
        print(f"  bare-torch / bare  {med['bare-torch'] / b:6.2f}   (numba vs the torch loop)")
        print(f"  hf / probes        {med['hf'] / med['probes']:6.2f}   (full capture vs transformers' bare forward)")
        print(f"  rerun / probes     {med['rerun'] / med['probes']:6.2f}   (edit at 0.9 T from the prefix cache)")
        if "steps" in med:
            print(f"  steps / bare       {med['steps'] / b:6.2f}   (token-by-token loop)")
    return rows


if __name__ == "__main__":
    main()
