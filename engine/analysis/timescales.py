"""Timescales: how many steps a unit remembers, measured from a trace.

**Autocorrelation decay time** (per unit, from its values alone, whatever the family).  For a
unit's series ``x_t`` within each sequence (never across sequences), the sample
autocorrelation at lag k is

    rho(k) = [sum_t (x_t - m)(x_(t+k) - m) / n_k] / [sum_t (x_t - m)^2 / n_0]     (m: the unit's mean)

with the sums pooled over the sequences and n_k the number of pairs k steps apart (so that each
lag's covariance is an average, not shrunk by (n - k) / n as in the "biased" estimator).  The decay time is the e-folding time of rho, fitted
by least squares through the origin to ``log rho(k)`` over the lags k = 1..K, where K is the
last lag before rho first falls below 1/e (at least lag 1; at most ``max_lag``):

    tau = -sum_k k^2 / sum_k k log rho(k)

For an AR(1) process ``x_t = phi x_(t-1) + noise`` the autocorrelation is ``phi^k``, so the fit
returns ``-1 / log phi`` for the expected rho (on a sample of T steps rho(k) carries a random
error of order sqrt(k / T), and the subtracted sample mean a bias of order 1/T).  A unit whose rho(1) <= 0 has tau 0 (no memory beyond a step); a
constant unit has tau NaN.

**Decay spectra** from the weights and the recorded gates of linear and gated recurrences are in
:mod:`engine.analysis.decay_spectrum`; both use :func:`effective_timescale` and
:func:`log_histogram`.
"""
from __future__ import annotations

import math

import numpy as np

MAX_LAG = 1000
UNITS_AT_ONCE = 64  # units transformed together (bounds the FFT's memory on long sequences)


def effective_timescale(mean_log_decay) -> np.ndarray:
    """``tau = -1 / <log a>`` in steps: the e-folding time of a product of per-step decays
    ``a_t`` whose mean log is ``<log a>`` (for a constant decay a: ``-1 / log a``).  A decay of
    1 (log 0) never forgets: tau = inf."""
    m = np.asarray(mean_log_decay, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(m < 0, -1.0 / np.where(m < 0, m, -1.0), np.inf)


def autocorrelation(values, offsets=None, max_lag: int = MAX_LAG) -> np.ndarray:
    """``rho[k, u]`` for lags 0..L (L = min(max_lag, longest sequence - 1)), pooled over the
    sequences ``offsets`` cuts ``values`` [tokens, units] into (see the module docstring).
    NaN for a unit that is constant over the whole input."""
    x = np.asarray(values)
    x = x.reshape(len(x), -1)
    offsets = np.asarray([0, len(x)] if offsets is None else offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if len(x) == 0 or lengths.max(initial=0) < 2:
        raise ValueError("autocorrelation needs a sequence of at least 2 steps")
    L = int(min(max_lag, lengths.max() - 1))
    mean = x.mean(axis=0, dtype=np.float64)
    acov = np.zeros((L + 1, x.shape[1]))
    pairs = np.zeros(L + 1)
    for s in range(len(lengths)):
        a, b = int(offsets[s]), int(offsets[s + 1])
        if b - a < 1:
            continue
        n = 1 << int(math.ceil(math.log2(2 * (b - a))))
        for u0 in range(0, x.shape[1], UNITS_AT_ONCE):
            d = x[a:b, u0 : u0 + UNITS_AT_ONCE].astype(np.float64) - mean[u0 : u0 + UNITS_AT_ONCE]
            f = np.fft.rfft(d, n=n, axis=0)
            r = np.fft.irfft(f * np.conj(f), n=n, axis=0)[: min(L + 1, b - a)]
            acov[: len(r), u0 : u0 + UNITS_AT_ONCE] += r
        m = min(L + 1, b - a)
        pairs[:m] += (b - a) - np.arange(m)
    acov = acov / np.maximum(pairs, 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = acov / acov[0]
    rho[:, acov[0] <= 0] = np.nan
    return rho


def decay_time(rho) -> np.ndarray:
    """The e-folding time of each column of ``rho`` [lags, units] (see the module docstring)."""
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim == 1:
        rho = rho[:, None]
    L, U = rho.shape[0] - 1, rho.shape[1]
    tau = np.full(U, np.nan)
    if L < 1:
        return tau
    r = rho[1:]
    ok = np.isfinite(r[0])
    below = r < math.exp(-1.0)
    first_below = np.where(below.any(axis=0), below.argmax(axis=0), L)  # index of the first lag under 1/e
    K = np.maximum(first_below, 1)  # fit lags 1..K (at least lag 1)
    k = np.arange(1, L + 1, dtype=np.float64)[:, None]
    use = (k <= K[None, :]) & (r > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logr = np.where(use, np.log(np.where(r > 0, r, 1.0)), 0.0)
        num = (k * k * use).sum(axis=0)
        den = (k * logr).sum(axis=0)
        t = np.where(den < 0, -num / np.where(den < 0, den, -1.0), np.inf)
    t[r[0] <= 0] = 0.0
    tau[ok] = t[ok]
    return tau


def autocorrelation_timescales(values, offsets=None, max_lag: int = MAX_LAG) -> np.ndarray:
    """Per-unit autocorrelation decay time in steps, of ``values`` [tokens, ...]."""
    return decay_time(autocorrelation(values, offsets, max_lag))


def log_histogram(tau, bins: int = 30, lo: float | None = None, hi: float | None = None):
    """A histogram of finite positive timescales on log-spaced bins: ``(edges, counts,
    n_infinite)``; ``n_infinite`` counts the entries that never decay (tau = inf)."""
    t = np.asarray(tau, dtype=np.float64).ravel()
    n_inf = int(np.count_nonzero(np.isposinf(t)))
    t = t[np.isfinite(t) & (t > 0)]
    if t.size == 0:
        return np.array([1.0, 10.0]), np.zeros(1, dtype=np.int64), n_inf
    lo = float(lo if lo is not None else max(t.min(), 1e-3))
    hi = float(hi if hi is not None else t.max())
    if hi <= lo * 1.0001:
        lo, hi = lo / 1.5, hi * 1.5
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(t, lo, hi), bins=edges)
    return edges, counts, n_inf
