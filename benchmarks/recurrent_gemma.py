"""RecurrentGemma (Griffin) speed, side by side in one process: SeqScope's instrumented forward
pass against ``transformers``' CPU forward of the same weights (its RG-LRU scan is a Python
loop over time).

    nice .venv/bin/python benchmarks/recurrent_gemma.py            # T = 256 (batch 2) and 1024
    nice .venv/bin/python benchmarks/recurrent_gemma.py --quick    # T = 256 only

Model: 6 layers (recurrent, recurrent, attention) x 2, hidden 256, lru width 256, 4 heads
(1 key/value head), attention window 512, vocabulary 1024, random weights.  Contenders
(median of interleaved repeats, wall time):

  hf          transformers RecurrentGemmaForCausalLM.forward (use_cache=False, sdpa): logits
  bare        ours, logits only (the default scan: numba when installed)
  bare-torch  ours, logits only, with the closed-form torch scan (the GPU path)
  probes      ours, every probe except attn
  attn        logits plus every layer's attn for a 256 x 256 window (the last 256 steps)
  rerun       an intervention at step 0.9 T re-run from the prefix cache (every probe but attn)

Threads: torch and numba both use ``--threads`` (default 1: the machine is shared).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import Intervention, Span  # noqa: E402
from engine.models.mamba import numba_available  # noqa: E402
from engine.models.recurrent_gemma_loading import from_transformers  # noqa: E402
from timing import print_times, speed_arguments, sweep, use_threads  # noqa: E402

ALL_BUT_ATTN = ["embed", "logits"] + [f"layers.*.{s}" for s in ("in", "y_branch", "x_branch", "conv", "gate_r", "gate_i",
                                                                 "a", "state", "mix", "q", "k", "v", "o", "out")]


def build(seed=0):
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = RecurrentGemmaConfig(num_hidden_layers=6, vocab_size=1024, hidden_size=256, intermediate_size=768,
                               num_attention_heads=4, num_key_value_heads=1, lru_width=256, attention_window_size=512)
    return RecurrentGemmaForCausalLM(cfg).eval()


def main(argv=None):
    args = speed_arguments(__doc__, argv, quick="T = 256 only")
    use_threads(args.threads, numba=numba_available())
    hf = build()
    ours, ref = from_transformers(hf), from_transformers(hf, scan="torch")
    print(f"torch {torch.__version__}, threads {args.threads}, scan {ours.scan}")
    engine.run(ours, np.arange(300) % 1024)  # compile the numba kernel, warm the allocator
    sizes = [(256, 2)] + ([] if args.quick else [(1024, 1)])

    def edit_at(T):  # the slider's edit, at 0.9 T
        return lambda v: Intervention("layers.0.a", "scale", v, positions=Span(int(0.9 * T)))

    for T, B, med in sweep(ours, hf, sizes, ALL_BUT_ATTN, edit_at, args.repeats, reference=ref):
        print_times(f"batch {B}, T = {T}  (median of {args.repeats})", med, 11)
        b = med["bare"]
        for k in ("hf", "bare-torch", "probes", "attn"):
            print(f"  {k} / bare {'':<{10 - len(k)}} {med[k] / b:6.2f}")
        print(f"  rerun / probes      {med['rerun'] / med['probes']:6.2f}   (edit at 0.9 T from the prefix cache)")


if __name__ == "__main__":
    main()
