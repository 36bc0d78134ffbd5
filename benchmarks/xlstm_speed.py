"""xLSTM (mLSTM) speed, side by side in one process: SeqScope's instrumented forward pass against
``transformers``' CPU forward of the same weights (its native chunkwise kernel).

    nice .venv/bin/python benchmarks/xlstm_speed.py             # T = 1024 and 4096
    nice .venv/bin/python benchmarks/xlstm_speed.py --quick     # T = 1024 only

(Not named ``xlstm.py``: a file of that name beside the script makes ``transformers`` believe the
``xlstm`` package is installed and import its code.)

Model: 4 blocks, hidden 256, 4 heads (q/k 32, v 64 per head), feed-forward 704, vocabulary 1024,
batch 1, random weights with lively gates.  Contenders (median of interleaved repeats, wall time):

  hf       transformers xLSTMForCausalLM.forward (use_cache=False): logits
  bare     ours, logits only
  probes   ours, every per-token probe but the state and the attention
  +state   the same plus every layer's memory C (heads x d_qk x d_v per token)
  attn     logits plus every layer's implicit attention for a 256 x 256 window (the last 256
           rows and columns)
  rerun    an intervention at step 0.9 T re-run from the prefix cache (all per-token probes)

Threads: ``--threads`` (default 1: the machine is shared; the comparison is like for like).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import Intervention, Span  # noqa: E402
from engine.models.xlstm import from_transformers  # noqa: E402
from timing import print_times, speed_arguments, sweep, use_threads  # noqa: E402

PER_TOKEN = ["embed", "logits"] + [f"layers.*.{s}" for s in ("in", "q", "k", "v", "gate_i", "gate_f", "gate_o",
                                                              "normalizer", "m", "h", "mix", "out")]


def build(seed=0):
    from transformers import xLSTMConfig, xLSTMForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    m = xLSTMForCausalLM(xLSTMConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_heads=4)).eval()
    with torch.no_grad():  # the init's gates are constant (zero weights): give them something to do
        for name, p in m.named_parameters():
            if "gate_preact" in name:
                p.normal_(0, 0.3) if name.endswith("weight") else p.normal_(2.0 if "fgate" in name else 0.0, 2.0)
    return m


def main(argv=None):
    args = speed_arguments(__doc__, argv)
    use_threads(args.threads)
    hf = build()
    ours = from_transformers(hf)
    print(f"torch {torch.__version__}, threads {args.threads}")
    engine.run(ours, np.arange(300) % 1024, probes="*")  # warm the allocator
    rows = []
    sizes = [(T, 1) for T in ([1024] if args.quick else [1024, 4096])]

    def edit_at(T):  # the slider's edit, at 0.9 T
        return lambda v: Intervention("layers.0.gate_f", "scale", v, positions=Span(int(0.9 * T)), units=[1])

    for T, _, med in sweep(ours, hf, sizes, PER_TOKEN, edit_at, args.repeats, state="layers.*.state"):
        rows.append((T, med))
        print_times(f"T = {T}  (median of {args.repeats})", med, 8)
        b = med["bare"]
        print(f"  hf / bare       {med['hf'] / b:6.2f}")
        print(f"  probes / bare   {med['probes'] / b:6.2f}")
        print(f"  +state / bare   {med['+state'] / b:6.2f}")
        print(f"  attn / bare     {med['attn'] / b:6.2f}   (256 x 256 window, 4 layers)")
        print(f"  rerun / probes  {med['rerun'] / med['probes']:6.2f}   (edit at 0.9 T from the prefix cache)")
    return rows


if __name__ == "__main__":
    main()
