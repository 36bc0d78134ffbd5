"""Gate statistics: how often each unit's gate is shut or wide open, and gate histograms.

Karpathy, Johnson & Fei-Fei (2015, "Visualizing and understanding recurrent networks") call a
sigmoid gate *left-saturated* at a step when its activation is below 0.1 and *right-saturated*
when it is above 0.9; the fraction of steps spent in each state, one point per unit, shows
which units act as switches (mostly saturated) and which integrate (mostly in between).

Pure numpy: arrays in, arrays out.
"""
from __future__ import annotations

import numpy as np

SIGMOID_RANGE = (0.0, 1.0)
TANH_RANGE = (-1.0, 1.0)
# Gate sites computed with tanh rather than a sigmoid (LSTM cell candidate, GRU new state):
# their range is -1..1 and the 0.1/0.9 saturation thresholds do not apply to them.
TANH_GATES = frozenset({"gate_g", "gate_n"})


def is_gate_site(site: str) -> bool:
    """``gate_i``, ``gate_f``, ``gate_z`` ..., and a bare ``gate`` (RetNet/GLA/RG-LRU)."""
    return site == "gate" or site.startswith("gate_")


def gate_range(site: str) -> tuple[float, float]:
    """The range a gate's activation lies in: (-1, 1) for tanh sites, (0, 1) otherwise."""
    return TANH_RANGE if site in TANH_GATES else SIGMOID_RANGE


def as_units(values) -> np.ndarray:
    """``values`` as [tokens, units]: 1-D is one unit; trailing axes are flattened."""
    a = np.asarray(values)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim > 2:
        return a.reshape(a.shape[0], -1)
    return a


def saturation(values, low: float = 0.1, high: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the fraction of steps with activation ``< low`` (left-saturated) and the
    fraction with activation ``> high`` (right-saturated).

    ``values``: [tokens, units].  Returns two float64 arrays of length ``units``.
    """
    a = as_units(values)
    n = a.shape[0]
    if n == 0:
        raise ValueError("saturation needs at least one step")
    if not low <= high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    left = np.count_nonzero(a < low, axis=0) / n
    right = np.count_nonzero(a > high, axis=0) / n
    return left.astype(np.float64), right.astype(np.float64)


def histogram(values, bins: int = 50, range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of all values of an array as fractions of the values (they sum to 1).

    Values outside ``range`` count in the end bins.  ``range`` defaults to the data's range.
    Returns ``(edges [bins + 1], fraction [bins])``.
    """
    a = np.asarray(values).ravel()
    if a.size == 0:
        raise ValueError("histogram needs at least one value")
    if range is None:
        lo, hi = float(np.min(a)), float(np.max(a))
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = float(range[0]), float(range[1])
        if not lo < hi:
            raise ValueError(f"bad histogram range {range}")
        a = np.clip(a, lo, hi)
    counts, edges = np.histogram(a, bins=bins, range=(lo, hi))
    return edges, counts / a.size


def row_sample(n: int, max_rows: int) -> slice:
    """A stride that keeps at most ``max_rows`` of ``n`` rows (for display summaries)."""
    if max_rows <= 0 or n <= max_rows:
        return slice(None)
    return slice(None, None, -(-n // max_rows))
