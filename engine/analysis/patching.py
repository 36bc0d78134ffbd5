"""Causal attribution by activation patching over positions: the effect on an output of zeroing
each earlier step's state, where gradients mislead (a saturated gate has no gradient and still
matters).

Each step t up to the target's step is patched in turn (the state probes of every layer set to
zero at step t) through ``engine.run``'s interventions and a prefix cache: the latest step
first, so that each re-run starts at its patched step and costs only the steps after it (the
prefix cache's guarantee: a cached re-run equals a run from scratch).
"""
from __future__ import annotations

import numpy as np

from ..errors import Cancelled
from ..interventions import Intervention
from ..run import PrefixCache, run
from .attribution import Attribution, Target, gradient_x_input, integrated_gradients, one_sequence, parse_target
from .differentiable import AttributionError, check_supported, state_probes

METHODS = ("grad", "ig", "patch")


def patching_attribution(model, inputs, target: Target, *, probes=None, cache: PrefixCache | None = None,
                         should_stop=None, progress=None) -> Attribution:
    """For each step t up to the target's: the output with the state of ``probes`` (default:
    every layer's :func:`state_probes`, and an LSTM's cell state) zeroed at step t, minus the
    clean output.  Runs through ``engine.run`` with a prefix cache, latest step first, so each
    re-run starts at its patched step."""
    check_supported(model, states=True)
    data, tokens = one_sequence(model, inputs, target)
    names = {s.name for s in model.probe_specs()}
    if probes is None:
        probes = state_probes(model) + [f"layers.{k}.c" for k in range(model.num_layers)
                                        if f"layers.{k}.c" in names]
    unknown = [p for p in probes if p not in names]
    if unknown:
        raise AttributionError(f"no probe {unknown[0]!r} in this model to zero")
    cache = cache if cache is not None else PrefixCache()
    T = len(data)

    def value(ivs):
        tr = run(model, data, probes=[target.probe], interventions=ivs, cache=cache, max_bytes=float("inf"))
        return float(tr[target.probe][target.step].reshape(-1)[target.index])

    clean = value(())
    scores = np.zeros(T)
    for n, t in enumerate(range(T - 1, -1, -1)):
        if should_stop is not None and should_stop():
            raise Cancelled("attribution cancelled")
        scores[t] = value([Intervention(p, "zero", positions=[t]) for p in probes]) - clean
        if progress is not None:
            progress(n + 1, T)
    return Attribution("patch", target, scores, clean, tokens,
                       notes=(f"zeroed at each step in turn: {', '.join(probes)}",))


def attribute(model, inputs, target: Target | str, method: str = "ig", *, steps: int = 32, **kwargs) -> Attribution:
    """One entry point: ``method`` "grad", "ig" or "patch"."""
    if isinstance(target, str):
        target = parse_target(target, model)
    if method == "grad":
        return gradient_x_input(model, inputs, target, **kwargs)
    if method == "ig":
        return integrated_gradients(model, inputs, target, steps=steps, **kwargs)
    if method == "patch":
        return patching_attribution(model, inputs, target, **kwargs)
    raise AttributionError(f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}")
