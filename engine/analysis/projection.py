"""Principal components of hidden states: where a trajectory of states goes, in 2 or 3 axes.

``pca(x)`` centres a [tokens, units] array, finds its principal axes by SVD, or by the
eigenvectors of the scatter matrix when there are many more rows than units (on a random
subsample of rows when there are more than ``max_rows``: the top axes of 100k states are well
estimated from a few thousand), and projects every row.  Pure numpy; deterministic (a fixed
seed for the subsample, and each axis's sign chosen so its largest loading is positive).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK = 16384  # rows per block when reducing or projecting, to bound float64 temporaries


@dataclass(frozen=True, eq=False)
class PCAResult:
    mean: np.ndarray  # [units] float64, the centre (mean of all rows)
    components: np.ndarray  # [k, units] float64, unit-norm principal axes, strongest first
    explained_variance: np.ndarray  # [k] variance of the data along each axis (ddof=1)
    explained_variance_ratio: np.ndarray  # [k] that variance over the total variance
    coords: np.ndarray  # [tokens, k] float64, every row projected on the axes
    n_fit: int  # rows the axes were fitted on (all, or the subsample)

    @property
    def k(self) -> int:
        return self.components.shape[0]


def column_mean(x: np.ndarray) -> np.ndarray:
    """Mean of each column in float64, in blocks (no full-size float64 copy)."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, x.shape[0], _CHUNK):
        total += x[s : s + _CHUNK].sum(axis=0, dtype=np.float64)
    return total / x.shape[0]


def project(x, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``(x - mean) @ components.T``, in blocks, returned as float64.  A float32 ``x`` is
    centred and multiplied in float32 (its own precision; several times faster on long traces)."""
    x = _as_2d(x)
    work = np.float32 if x.dtype == np.float32 else np.float64
    m, c = np.asarray(mean, dtype=work), np.asarray(components, dtype=work)
    out = np.empty((x.shape[0], components.shape[0]), dtype=np.float64)
    for s in range(0, x.shape[0], _CHUNK):
        out[s : s + _CHUNK] = (x[s : s + _CHUNK].astype(work, copy=False) - m) @ c.T
    return out


def pca(x, k: int = 2, *, max_rows: int = 20000, seed: int = 0) -> PCAResult:
    """Principal component analysis of ``x`` [tokens, units].

    The axes are fitted on at most ``max_rows`` rows (a seeded random subsample, sorted), all
    rows are projected.  ``k`` is capped at what the data can give (rows fitted, units).
    Variance ratios are 0 when the data has no variance at all.
    """
    x = _as_2d(x)
    n, u = x.shape
    if n == 0 or u == 0:
        raise ValueError(f"PCA needs a non-empty [tokens, units] array, got shape {x.shape}")
    if k < 1:
        raise ValueError("k must be at least 1")
    mean = column_mean(x)
    if n > max_rows > 0:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
        fit = x[rows].astype(np.float64)
    else:
        fit = x.astype(np.float64)
    fit -= mean
    m = fit.shape[0]
    if m > 2 * u:
        # tall: eigenvectors of the u x u scatter matrix (much cheaper than the SVD of fit)
        evals, evecs = np.linalg.eigh(fit.T @ fit)
        order = np.argsort(evals)[::-1]
        s = np.sqrt(np.clip(evals[order], 0.0, None))
        vt = evecs[:, order].T
        k = min(k, u, m)
    else:
        _, s, vt = np.linalg.svd(fit, full_matrices=False)
        k = min(k, vt.shape[0])
    comps = vt[:k].copy()
    # Sign convention: each axis's loading of largest magnitude is positive.
    big = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(k), big])
    signs[signs == 0] = 1.0
    comps *= signs[:, None]
    var = s**2 / max(m - 1, 1)
    total = float(np.sum(s**2))
    ratio = (s[:k] ** 2 / total) if total > 0 else np.zeros(k)
    coords = project(x, mean, comps)
    return PCAResult(mean=mean, components=comps, explained_variance=var[:k].copy(),
                     explained_variance_ratio=np.asarray(ratio, dtype=np.float64), coords=coords, n_fit=m)


def _as_2d(x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim > 2:
        return a.reshape(a.shape[0], -1)
    return a
