"""Mamba2 (SSD) speed, side by side in one process: SeqScope's instrumented forward pass
against ``transformers``' CPU forward of the same weights (its torch fallback
``mamba2_chunk_scan``, no ``mamba_ssm``).

    nice .venv/bin/python benchmarks/mamba2.py            # T = 1024 and 4096
    nice .venv/bin/python benchmarks/mamba2.py --quick    # T = 1024 only

Model: 4 layers, d_model 256, 8 heads x head_dim 64 (d_inner 512), d_state 64, 1 group, conv 4,
vocabulary 1024, batch 1, random weights.  Contenders (median of interleaved repeats, wall time):

  hf       transformers Mamba2ForCausalLM.forward (use_cache=False): logits
  bare     ours, logits only
  probes   ours, every per-token probe (embed, in, z, x, B, C, dt, y, gated, out, logits)
  +state   the same plus layer 0's per-step state [T, 512, 64]
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
from engine.models.mamba2_loading import from_transformers  # noqa: E402
from timing import print_times, speed_arguments, sweep, use_threads  # noqa: E402

PER_TOKEN = ["embed", "logits"] + [f"layers.*.{s}" for s in ("in", "z", "x", "B", "C", "dt", "y", "gated", "out")]


def build(seed=0):
    from transformers import Mamba2Config, Mamba2ForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = Mamba2Config(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_heads=8, head_dim=64,
                       state_size=64, n_groups=1, expand=2, conv_kernel=4)
    return Mamba2ForCausalLM(cfg).eval()


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
        return lambda v: Intervention("layers.0.dt", "scale", v, positions=Span(int(0.9 * T)), units=[3])

    for T, _, med in sweep(ours, hf, sizes, PER_TOKEN, edit_at, args.repeats, state="layers.0.state"):
        rows.append((T, med))
        print_times(f"T = {T}  (median of {args.repeats})", med, 8)
        b = med["bare"]
        print(f"  hf / bare        {med['hf'] / b:6.2f}")
        print(f"  probes / bare    {med['probes'] / b:6.2f}")
        print(f"  +state / bare    {med['+state'] / b:6.2f}   (layer 0's state)")
        print(f"  attn / bare      {med['attn'] / b:6.2f}   (256 x 256 window, 4 layers)")
        print(f"  hf / probes      {med['hf'] / med['probes']:6.2f}   (full capture vs transformers' bare forward)")
        print(f"  rerun / probes   {med['rerun'] / med['probes']:6.2f}   (edit at 0.9 T from the prefix cache)")
    return rows


if __name__ == "__main__":
    main()
