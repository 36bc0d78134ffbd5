"""The analyses of issue 13, timed side by side with one forward pass of the same model on the
same input (medians of interleaved repeats, one torch thread; ratios are what to read on a
shared machine).

- fixed points: the search on the bundled Dyck GRU (``assets/models/gru-dyck``, 64 units) from
  128 of the states of its sample (``fixed_points.find_fixed_points``, mean input), and the
  Jacobians along the sample (``jacobian.spectra_along``, every step), each ÷ one forward pass
  recording every probe;
- timescales: the decay spectrum and the autocorrelation times of the bundled delayed-match LSTM
  on its sample, ÷ its forward pass;
- and whatever ``benchmarks/analysis_attribution.py`` measures (its ``bench_attribution()``, when
  that file and function exist: the attribution work of the same issue), printed after these.

    .venv/bin/python benchmarks/analysis.py [--quick] [--repeats N]
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from engine.analysis import decay_spectrum as DS  # noqa: E402
from engine.analysis import fixed_points as FP  # noqa: E402
from engine.analysis import jacobian as JA  # noqa: E402
from engine.analysis import state_step as SS  # noqa: E402
from engine.analysis import timescales as TS  # noqa: E402
from engine.tokenizers import read_numeric  # noqa: E402
from timing import median_times, speed_arguments, use_threads  # noqa: E402

GRU = ROOT / "assets/models/gru-dyck"
LSTM = ROOT / "assets/models/lstm-timeseries"


def ratios(title: str, med: dict, base: str):
    print(f"\n{title}")
    for k, v in med.items():
        extra = "" if k == base else f"   {v / med[base]:7.1f} x the forward pass"
        print(f"  {k:<34} {v * 1e3:9.1f} ms{extra}")


def bench_fixed_points(repeats: int, quick: bool):
    model = engine.load(GRU)
    text = (GRU / "sample.txt").read_text()
    if quick:
        text = text[:300]
    step = SS.state_step(model, 0)
    trace = engine.run(model, text)
    states = step.states(trace)
    starts = states[JA.choose_steps(len(states), 128)]
    u = FP.constant_input(step, trace, model, "mean")
    found = {}

    def search():
        found["r"] = FP.find_fixed_points(step, u, starts)

    med = median_times({"forward pass (every probe)": lambda: engine.run(model, text),
                        "fixed points (128 starts)": search,
                        "Jacobian spectra (every step)": lambda: JA.spectra_along(step, trace, 0, max_steps=None)},
                       repeats)
    kinds = ", ".join(f"{p.kind} {p.stability}" for p in found["r"].points) or "none"
    ratios(f"gru-dyck, {trace.n_tokens} steps, 64 units: found {kinds}", med, "forward pass (every probe)")


def bench_timescales(repeats: int):
    model = engine.load(LSTM)
    x = read_numeric(LSTM / "sample.csv")
    trace = engine.run(model, x)
    med = median_times({"forward pass (every probe)": lambda: engine.run(model, x),
                        "decay spectrum": lambda: DS.decay_spectrum(model, trace),
                        "autocorrelation times (c)": lambda: TS.autocorrelation_timescales(trace["layers.0.c"])},
                       repeats)
    ratios(f"lstm-timeseries, {trace.n_tokens} steps, 32 units", med, "forward pass (every probe)")


def attribution_hook(quick: bool = False):
    """Run ``bench_attribution()`` of ``benchmarks/analysis_attribution.py`` when it exists."""
    path = ROOT / "benchmarks" / "analysis_attribution.py"
    if not path.is_file():
        print("\n(attribution: benchmarks/analysis_attribution.py is not here)")
        return
    spec = importlib.util.spec_from_file_location("analysis_attribution", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "bench_attribution", None)
    if fn is None:
        print("\n(attribution: analysis_attribution.py has no bench_attribution())")
        return
    print("\nattribution (benchmarks/analysis_attribution.py):")
    import inspect

    lines = fn(quick=quick) if "quick" in inspect.signature(fn).parameters else fn()
    for line in lines or ():  # it may print its own lines and return None
        print(f"  {line}")


def main(argv=None):
    args = speed_arguments(__doc__, argv, quick="the first 300 characters of the GRU's sample")
    use_threads(args.threads)
    np.set_printoptions(precision=3)
    bench_fixed_points(args.repeats, args.quick)
    bench_timescales(args.repeats)
    attribution_hook(args.quick)


if __name__ == "__main__":
    main()
