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

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import Intervention, PrefixCache, Span  # noqa: E402
from engine.models.rwkv import numba_available  # noqa: E402
from engine.models.rwkv_loading import from_transformers  # noqa: E402
from timing import capture_contenders, median_times, print_times, speed_arguments, use_threads  # noqa: E402

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


def main(argv=None):
    args = speed_arguments(__doc__, argv)
    use_threads(args.threads, numba=numba_available())
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
        cache = PrefixCache()
        engine.run(ours, ids, probes=PER_TOKEN, cache=cache)

        def hf_steps():
            with torch.no_grad():
                state = None
                for t in range(T):
                    state = hf(x[:, t:t + 1], state=state, use_cache=True).state

        contenders = capture_contenders(
            ours, ids, PER_TOKEN, hf, x, cache, state="layers.*.state", reference=ref,
            edit=lambda v: Intervention("layers.0.w", "scale", v, positions=Span(int(0.9 * T)), units=[3]))
        if T <= 1024:
            contenders["steps"] = hf_steps
        reps = args.repeats if T <= 1024 else max(1, args.repeats - 1)
        med = median_times(contenders, reps)
        rows.append((T, med))
        print_times(f"T = {T}  (median of {reps})", med, 11)
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
