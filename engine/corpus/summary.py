"""Per-unit statistics of one probe, computed while a corpus streams, and mergeable.

This docstring is the contract of ``/summary/<probe>/`` in corpus trace files (DESIGN.md §3);
the recorder writes it, the queries read it.

Units
-----
A probe's values for one token have the shape ``unit_shape`` (the probe's shape after the token
axis: ``[H]`` for ``layers.0.h``, ``[d_inner, d_state]`` for a Mamba ``state``).  Units are that
shape flattened in C order: unit ``u`` is ``np.unravel_index(u, unit_shape)``, and the probe's
values for unit ``u`` over all tokens are ``probe[:].reshape(N, -1)[:, u]``.  A probe with more
than :data:`MAX_UNITS` (65,536) units per token gets no summary (its memory and time grow with
units x (2k + bins)); the recorder then lists it in the ``/summary`` attr ``skipped``.

Values
------
Statistics are computed on the values **as stored** in ``/probes/<probe>`` (after the cast to
float16 when the file stores float16), so that they equal a brute-force computation over the
file's arrays.  Non-finite values (NaN, ±inf) are left out of every statistic and counted in
``nonfinite``.

Layout: group ``/summary/<probe>/``, U = number of units, K = ``attrs["k"]``, B = ``attrs["bins"]``
------------------------------------------------------------------------------------------------
==============  ===========  =========  ======================================================
dataset         dtype        shape      meaning (per unit u)
==============  ===========  =========  ======================================================
``count``       int64        [U]        number of finite values
``nonfinite``   int64        [U]        number of NaN/inf values (left out of everything)
``mean``        float64      [U]        mean of the finite values (NaN when count is 0)
``m2``          float64      [U]        sum of squared deviations from the mean (Welford's
                                        M2): variance = m2 / count (population),
                                        m2 / (count - 1) sample; std = sqrt of it
``min``         float64      [U]        smallest finite value (NaN when count is 0)
``max``         float64      [U]        largest finite value (NaN when count is 0)
``hist_edges``  float64      [U, B+1]   ``linspace(-R_u, R_u, B + 1)``, see Histograms
``hist_counts`` int64        [U, B]     finite values in each bin; sums to ``count``
``top_pos``     int64        [U, K]     token positions (global index into ``/tokens``) of the
                                        K largest values, best first
``top_val``     float64      [U, K]     those values
``bottom_pos``  int64        [U, K]     positions of the K smallest values, smallest first
``bottom_val``  float64      [U, K]     those values
==============  ===========  =========  ======================================================

attrs: ``k`` (int), ``bins`` (int), ``units`` (int, U), ``unit_shape`` (JSON list of ints),
``emin`` (int, the smallest histogram exponent), ``format`` = ``"seqscope-summary-1"``.

Top-k: exact.  Ordering is by value (descending for ``top``, ascending for ``bottom``) and, on
equal values, by the **smaller position first** — also for which of several equal values make
it into the K.  When a unit has fewer than K finite values the lists end with position ``-1``
and value NaN.

Histograms: the edges are fixed by the data's magnitude alone, so that summaries merge exactly.
Unit u's range is ``[-R_u, R_u)`` with ``R_u = 2**e_u``, the smallest power of two strictly
greater than every finite ``|value|`` of the unit (``e_u >= emin``, -24).  B is a power of two
(>= 4, default 128), so bin widths are powers of two and a value's bin
``floor(x / w) + B / 2`` (``w = 2 R_u / B``) is computed exactly; when a larger value arrives the
range doubles and pairs of bins merge exactly.  Hence there is no under- or overflow, every
finite value is counted, and a unit's histogram depends only on its values, not on the order or
the pieces they were streamed in.  The price: a unit with one outlier has coarse bins for the
rest (the range is set by the outlier).

Merging (:meth:`Summary.merge`): the summary of two disjoint sets of tokens merged equals the
summary of their union exactly for ``count``, ``nonfinite``, ``min``, ``max``, histograms and
top-k, and to float64 rounding for ``mean`` and ``m2`` (Chan et al.'s pairwise update).
Positions must be global before merging (:meth:`Summary.shifted` moves a shard's).
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..errors import LoadError, SeqScopeError
from . import summary_kernel

FORMAT = "seqscope-summary-1"
DEFAULT_K = 64
DEFAULT_BINS = 128
EMIN = -24
MAX_UNITS = 65_536
DATASETS = ("count", "nonfinite", "mean", "m2", "min", "max", "hist_edges", "hist_counts",
            "top_pos", "top_val", "bottom_pos", "bottom_val")


class SummaryError(SeqScopeError):
    """A summary that cannot be built, merged or read, with the reason."""


class SummaryLoadError(SummaryError, LoadError):
    """A ``/summary`` group in a file that is damaged or not what it claims."""


def _check_params(k: int, bins: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SummaryError(f"top-k needs k >= 1, got {k!r}")
    if not isinstance(bins, (int, np.integer)) or bins < 4 or bins & (bins - 1):
        raise SummaryError(f"histogram bins must be a power of two >= 4 (exact merging needs it), got {bins!r}")


class Summary:
    """Streaming statistics of every unit of one probe (see the module doc).  Mutable: feed it
    blocks of tokens with :meth:`update`; combine with :meth:`merge`."""

    def __init__(self, unit_shape, *, k: int = DEFAULT_K, bins: int = DEFAULT_BINS):
        _check_params(k, bins)
        self.unit_shape = tuple(int(n) for n in unit_shape)
        U = math.prod(self.unit_shape)
        if U > MAX_UNITS:
            raise SummaryError(f"a probe with {U:,} units per token is too large to summarise (at most "
                               f"{MAX_UNITS:,}); record it without a summary")
        self.units, self.k, self.bins = U, int(k), int(bins)
        self.count = np.zeros(U, np.int64)
        self.nonfinite = np.zeros(U, np.int64)
        self.mean = np.full(U, np.nan)
        self.m2 = np.zeros(U)
        self.min = np.full(U, np.nan)
        self.max = np.full(U, np.nan)
        self.hexp = np.full(U, EMIN, np.int64)
        self.hist = np.zeros((U, self.bins), np.int64)
        self.top_val = np.full((U, self.k), np.nan)
        self.top_pos = np.full((U, self.k), -1, np.int64)
        self._bot_key = np.full((U, self.k), np.nan)  # -value: the bottom list as a "top" list
        self.bottom_pos = np.full((U, self.k), -1, np.int64)

    # -- streaming ---------------------------------------------------------------------------
    def update(self, block, start: int) -> None:
        """Fold ``block`` (``[n, *unit_shape]``: tokens ``start .. start + n - 1``) in.  Blocks may
        come in any order; positions must not repeat."""
        a = np.asarray(block)
        if a.shape[1:] != self.unit_shape:
            raise SummaryError(f"a block of shape {a.shape[1:]} per token does not fit a summary of {self.unit_shape}")
        if not len(a):
            return
        x = _as_float(a.reshape(len(a), self.units))
        summary_kernel.update(x, np.int64(start), np.int64(EMIN), self.count, self.nonfinite, self.mean,
                              self.m2, self.min, self.max, self.hexp, self.hist, self.top_val, self.top_pos,
                              self._bot_key, self.bottom_pos)

    # -- derived -----------------------------------------------------------------------------
    @property
    def bottom_val(self) -> np.ndarray:
        return -self._bot_key

    @property
    def variance(self) -> np.ndarray:
        """Population variance (m2 / count); NaN where there is no value."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def hist_edges(self) -> np.ndarray:
        R = np.ldexp(1.0, self.hexp)[:, None]
        return np.linspace(-1.0, 1.0, self.bins + 1)[None, :] * R

    # -- combining ---------------------------------------------------------------------------
    def copy(self) -> "Summary":
        out = Summary.__new__(Summary)
        out.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})
        return out

    def shifted(self, offset: int) -> "Summary":
        """The same summary with every position moved by ``offset`` (a shard's first token)."""
        out = self.copy()
        for pos in (out.top_pos, out.bottom_pos):
            pos[pos >= 0] += int(offset)
        return out

    def merge(self, other: "Summary") -> "Summary":
        """The summary of both sets of tokens (positions must be disjoint and global)."""
        if (self.unit_shape, self.k, self.bins) != (other.unit_shape, other.k, other.bins):
            raise SummaryError(f"cannot merge summaries of different shape, k or bins: {self.unit_shape}/{self.k}/"
                               f"{self.bins} and {other.unit_shape}/{other.k}/{other.bins}")
        a, b = self, other
        out = a.copy()
        na, nb = a.count.astype(np.float64), b.count.astype(np.float64)
        n = na + nb
        out.count = a.count + b.count
        out.nonfinite = a.nonfinite + b.nonfinite
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = b.mean - a.mean
            mean = a.mean + delta * (nb / n)
            m2 = a.m2 + b.m2 + delta * delta * (na * nb / n)
        out.mean = np.where(nb == 0, a.mean, np.where(na == 0, b.mean, mean))
        out.m2 = np.where(nb == 0, a.m2, np.where(na == 0, b.m2, m2))
        out.min = np.fmin(a.min, b.min)
        out.max = np.fmax(a.max, b.max)
        out.hexp = np.maximum(a.hexp, b.hexp)
        out.hist = _folded(a.hist, a.hexp, out.hexp) + _folded(b.hist, b.hexp, out.hexp)
        out.top_val, out.top_pos = _merge_best(a.top_val, a.top_pos, b.top_val, b.top_pos, self.k)
        out._bot_key, out.bottom_pos = _merge_best(a._bot_key, a.bottom_pos, b._bot_key, b.bottom_pos, self.k)
        return out

    # -- files -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The datasets of the file layout, by name."""
        return {"count": self.count, "nonfinite": self.nonfinite, "mean": self.mean, "m2": self.m2,
                "min": self.min, "max": self.max, "hist_edges": self.hist_edges, "hist_counts": self.hist,
                "top_pos": self.top_pos, "top_val": self.top_val, "bottom_pos": self.bottom_pos,
                "bottom_val": self.bottom_val}

    def write(self, parent, name: str) -> None:
        """Write (or overwrite in place) the group ``parent/name`` (h5py)."""
        group = parent.require_group(name)
        group.attrs.update({"format": FORMAT, "k": self.k, "bins": self.bins, "units": self.units,
                            "unit_shape": json.dumps(list(self.unit_shape)), "emin": EMIN})
        for key, value in self.arrays().items():
            if key in group and group[key].shape == value.shape and group[key].dtype == value.dtype:
                group[key][...] = value
            else:
                if key in group:
                    del group[key]
                group.create_dataset(key, data=value)

    @classmethod
    def read(cls, group) -> "Summary":
        """A summary from its group, every dataset checked against the layout (a damaged group
        is a :class:`SummaryLoadError` that names what is wrong)."""
        where = getattr(group, "name", "summary")

        def fail(what):
            raise SummaryLoadError(f"summary {where} is damaged: {what}")

        try:
            k, bins = int(group.attrs["k"]), int(group.attrs["bins"])
            unit_shape = json.loads(group.attrs["unit_shape"])
        except (KeyError, ValueError, TypeError):
            fail("its attributes k, bins and unit_shape are missing or unreadable")
        if not isinstance(unit_shape, list) or not all(isinstance(n, int) and n >= 0 for n in unit_shape):
            fail(f"unit_shape is {unit_shape!r}")
        try:
            out = cls(unit_shape, k=k, bins=bins)
        except SummaryError as exc:
            fail(str(exc))
        U = out.units
        want = {"count": ("i", (U,)), "nonfinite": ("i", (U,)), "mean": ("f", (U,)), "m2": ("f", (U,)),
                "min": ("f", (U,)), "max": ("f", (U,)), "hist_edges": ("f", (U, bins + 1)),
                "hist_counts": ("i", (U, bins)), "top_pos": ("i", (U, k)), "top_val": ("f", (U, k)),
                "bottom_pos": ("i", (U, k)), "bottom_val": ("f", (U, k))}
        data = {}
        for key, (kind, shape) in want.items():
            ds = group.get(key)
            if ds is None or not hasattr(ds, "dtype"):
                fail(f"it has no dataset {key}")
            if ds.dtype.kind not in ("iu" if kind == "i" else "f") or tuple(ds.shape) != shape:
                fail(f"{key} is {ds.dtype} {tuple(ds.shape)}, expected {shape}")
            data[key] = ds[...]
        R = data["hist_edges"][:, -1] if U else np.zeros(0)
        mant, exp = np.frexp(R)
        if np.any(mant != 0.5):
            fail("hist_edges do not end at powers of two")
        out.count, out.nonfinite = data["count"].astype(np.int64), data["nonfinite"].astype(np.int64)
        out.mean, out.m2 = data["mean"].astype(np.float64), data["m2"].astype(np.float64)
        out.min, out.max = data["min"].astype(np.float64), data["max"].astype(np.float64)
        out.hexp = (exp - 1).astype(np.int64)
        out.hist = data["hist_counts"].astype(np.int64)
        out.top_val, out.top_pos = data["top_val"].astype(np.float64), data["top_pos"].astype(np.int64)
        out._bot_key, out.bottom_pos = -data["bottom_val"].astype(np.float64), data["bottom_pos"].astype(np.int64)
        return out

    def __repr__(self) -> str:
        return f"Summary({self.units} units of {list(self.unit_shape)}, k={self.k}, bins={self.bins}, " \
               f"{int(self.count.max()) if self.units else 0} values per unit)"


def summarize(array, *, k: int = DEFAULT_K, bins: int = DEFAULT_BINS, start: int = 0) -> Summary:
    """The summary of a whole ``[N, *unit_shape]`` array in one go (tokens ``start ..``)."""
    a = np.asarray(array)
    s = Summary(a.shape[1:], k=k, bins=bins)
    s.update(a, start)
    return s


def _as_float(a: np.ndarray) -> np.ndarray:
    """float64 stays, anything else becomes float32 (float16 exactly, through torch's vectorised
    conversion: numpy's is about ten times slower)."""
    if a.dtype == np.float64:
        return np.ascontiguousarray(a)
    if a.dtype == np.float16:
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).float().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def _folded(hist: np.ndarray, hexp: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = hist.copy()
    for u in np.flatnonzero(target > hexp):
        summary_kernel.fold_histogram(out[u], int(target[u] - hexp[u]))
    return out


def _merge_best(va, pa, vb, pb, k: int):
    """Per unit, the k best of two best-first lists: larger value first, then smaller position;
    empty slots (position -1) last."""
    vals = np.concatenate([va, vb], axis=1)
    pos = np.concatenate([pa, pb], axis=1)
    empty = pos < 0
    order = np.lexsort((np.where(empty, 0, pos), np.where(empty, 0.0, -vals), empty), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(pos, order, 1)


__all__ = ["Summary", "summarize", "SummaryError", "SummaryLoadError", "DEFAULT_K", "DEFAULT_BINS", "MAX_UNITS",
           "EMIN", "DATASETS", "FORMAT"]
