"""What the family speed benchmarks (ssm, mamba2, rwkv, recurrent_gemma, xlstm_speed) share: their
command line, the threads they run on, a slider move re-run from the prefix cache, and medians of
interleaved repeats (every contender once per round, so a slow spell of the shared machine falls
on all of them alike)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def speed_arguments(doc: str, argv=None, quick: str = "T = 1024 only"):
    """``--quick`` (help ``quick``), ``--repeats`` (3) and ``--threads`` (1: the machine is shared,
    the comparison is like for like), parsed from ``argv``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def use_threads(threads: int, numba: bool = False):
    """Run torch (and, with ``numba``, numba's compiled loops) on ``threads`` threads."""
    torch.set_num_threads(threads)
    if numba:
        import numba as nb

        nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_times(contenders: dict, repeats: int) -> dict:
    """The median wall time of each contender over ``repeats`` interleaved rounds."""
    times = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, fn in contenders.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def print_times(title: str, med: dict, width: int):
    print(f"\n{title}")
    for k, v in med.items():
        print(f"  {k:<{width}} {v * 1e3:9.1f} ms")


def slider(run_with):
    """A slider move re-run from the prefix cache: each call runs ``run_with(value)`` with a
    value different from the previous call's (0.75, 0.25, 0.75, ...), so every call re-runs
    from the edited step.  (Until 2026-11-25 the value started at 0.5 and stayed there, so the
    repeats re-ran an unchanged edit and the published re-run ratios were too small.)"""
    value = {"v": 0.25}

    def move():
        value["v"] = 1.0 - value["v"]
        run_with(value["v"])

    return move


def capture_contenders(model, inputs, per_token, hf, x, cache, edit, reference=None, state=None) -> dict:
    """What every family benchmark times, in the order it prints them:

    ``hf``          the ``transformers`` model ``hf`` on ``x`` (``use_cache=False``)
    ``bare``        ``model`` on ``inputs``, logits only
    ``bare-torch``  the same with ``reference`` (the model on its torch scan), when given
    ``probes``      every per-token probe (``per_token``)
    ``+state``      those and the ``state`` probes, when given
    ``attn``        logits and every layer's implicit attention
    ``rerun``       a slider move of ``edit(value)`` (an Intervention) from ``cache``
    """
    import engine

    def hf_forward():
        with torch.no_grad():
            hf(x, use_cache=False)

    contenders = {"hf": hf_forward, "bare": lambda: engine.run(model, inputs, probes="logits")}
    if reference is not None:
        contenders["bare-torch"] = lambda: engine.run(reference, inputs, probes="logits")
    contenders["probes"] = lambda: engine.run(model, inputs, probes=per_token)
    if state is not None:
        contenders["+state"] = lambda: engine.run(model, inputs, probes=per_token + [state])
    contenders["attn"] = lambda: engine.run(model, inputs, probes=["logits", "layers.*.attn"])
    contenders["rerun"] = slider(lambda v: engine.run(model, inputs, probes=per_token, cache=cache,
                                                      interventions=[edit(v)]))
    return contenders


def sweep(model, hf, sizes, per_token, edit_at, repeats: int, *, vocab: int = 1024, state=None, reference=None):
    """The family benchmarks' loop: for each ``(T, batch)`` in ``sizes``, random token ids
    (seeded by T), the prefix cache warmed by a per-token capture, an attention window of the
    last 256 rows and columns, and the :func:`capture_contenders` timed (medians of
    ``repeats``); yields ``(T, batch, medians)``.  ``edit_at(T)`` gives the slider's
    ``value -> Intervention``."""
    import numpy as np

    import engine

    for T, B in sizes:
        seqs = [np.random.default_rng(T + b).integers(0, vocab, T) for b in range(B)]
        inputs = seqs[0] if B == 1 else seqs
        model.attention_window = ((T - 256, T), (T - 256, T))
        cache = engine.PrefixCache()
        engine.run(model, inputs, probes=per_token, cache=cache)
        contenders = capture_contenders(model, inputs, per_token, hf, torch.tensor(np.stack(seqs)), cache,
                                        edit_at(T), reference=reference, state=state)
        yield T, B, median_times(contenders, repeats)
