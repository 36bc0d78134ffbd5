"""The compiled loop behind :class:`engine.corpus.summary.Summary` (numba; plain Python when
numba cannot be imported, same results, much slower).

One call folds a block of tokens ``x`` (``[units, n]``, float32 or float64, one row per unit)
into the running statistics of every unit, in one pass per unit for the moments and one for the
histogram and the top-k heaps.  Kept at module level so that numba's on-disk cache hits.

Top-k lists are kept sorted best first between calls.  A list sorted worst first is a valid
min-heap ("worst" at the root), so a call reverses it, pushes candidates into the heap and
heap-sorts it back.  "Better" means a larger key, and on equal keys the smaller position; the
bottom list uses the key ``-value``.
"""
from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit
except Exception:  # pragma: no cover - numba missing or broken: the same code, interpreted
    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


@njit(nogil=True, cache=True)
def _worse(v1, p1, v2, p2):  # pragma: no cover - compiled
    return v1 < v2 or (v1 == v2 and p1 > p2)


@njit(nogil=True, cache=True)
def _sift_down(vals, pos, i, size):  # pragma: no cover - compiled
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and _worse(vals[right], pos[right], vals[left], pos[left]):
            child = right
        if _worse(vals[child], pos[child], vals[i], pos[i]):
            vals[i], vals[child] = vals[child], vals[i]
            pos[i], pos[child] = pos[child], pos[i]
            i = child
        else:
            return


@njit(nogil=True, cache=True)
def _sift_up(vals, pos, i):  # pragma: no cover - compiled
    while i > 0:
        parent = (i - 1) // 2
        if _worse(vals[i], pos[i], vals[parent], pos[parent]):
            vals[i], vals[parent] = vals[parent], vals[i]
            pos[i], pos[parent] = pos[parent], pos[i]
            i = parent
        else:
            return


@njit(nogil=True, cache=True)
def _reverse(vals, pos, size):  # pragma: no cover - compiled
    for i in range(size // 2):
        j = size - 1 - i
        vals[i], vals[j] = vals[j], vals[i]
        pos[i], pos[j] = pos[j], pos[i]


@njit(nogil=True, cache=True)
def _heap_sort_best_first(vals, pos, size):  # pragma: no cover - compiled
    for end in range(size - 1, 0, -1):
        vals[0], vals[end] = vals[end], vals[0]
        pos[0], pos[end] = pos[end], pos[0]
        _sift_down(vals, pos, 0, end)


@njit(nogil=True, cache=True)
def _offer(vals, pos, size, k, v, p):  # pragma: no cover - compiled
    """Offer (v, p) to the heap of ``size`` entries (capacity k); returns the new size."""
    if size < k:
        vals[size] = v
        pos[size] = p
        _sift_up(vals, pos, size)
        return size + 1
    if _worse(vals[0], pos[0], v, p):
        vals[0] = v
        pos[0] = p
        _sift_down(vals, pos, 0, size)
    return size


@njit(nogil=True, cache=True)
def fold_histogram(counts, times):  # pragma: no cover - compiled
    """Double a histogram's range ``times`` times: over [-R, R] with width w, bin j of the
    doubled range [-2R, 2R] holds old bins 2(j - B/4) and 2(j - B/4) + 1 (B divisible by 4)."""
    B = counts.shape[0]
    tmp = np.zeros(B, dtype=np.int64)
    for _ in range(times):
        for j in range(B):
            tmp[j] = 0
        for j in range(B):
            tmp[j // 2 + B // 4] += counts[j]
        for j in range(B):
            counts[j] = tmp[j]


@njit(nogil=True, cache=True)
def update(x, start, emin, count, nonfinite, mean, m2, vmin, vmax, hexp, hist,
           top_val, top_pos, bot_key, bot_pos):  # pragma: no cover - compiled
    """Fold ``x[u, t]`` (token ``start + t``) into unit ``u``'s statistics, for every unit."""
    U, n = x.shape
    B = hist.shape[1]
    K = top_val.shape[1]
    for u in range(U):
        row = x[u]
        cnt = 0
        s = 0.0
        lo = math.inf
        hi = -math.inf
        bad = 0
        for t in range(n):
            v = np.float64(row[t])
            if not math.isfinite(v):
                bad += 1
                continue
            cnt += 1
            s += v
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        nonfinite[u] += bad
        if cnt == 0:
            continue
        mb = s / cnt
        # histogram range: the smallest power of two 2**e > max|x| (e >= emin)
        big = max(abs(lo), abs(hi))
        e = emin
        if big > 0.0:
            e = max(emin, math.frexp(big)[1])
        if e > hexp[u]:
            fold_histogram(hist[u], e - hexp[u])
            hexp[u] = e
        inv_w = B / (2.0 ** (hexp[u] + 1))  # a power of two: x * inv_w is exact
        half = B // 2
        size = min(count[u], K)
        tv, tp, bk, bp = top_val[u], top_pos[u], bot_key[u], bot_pos[u]
        _reverse(tv, tp, size)
        _reverse(bk, bp, size)
        ts = size
        bs = size
        m2b = 0.0
        for t in range(n):
            v = np.float64(row[t])
            if not math.isfinite(v):
                continue
            d = v - mb
            m2b += d * d
            j = int(math.floor(v * inv_w)) + half
            if j < 0:
                j = 0
            elif j >= B:
                j = B - 1
            hist[u, j] += 1
            p = start + t
            ts = _offer(tv, tp, ts, K, v, p)
            bs = _offer(bk, bp, bs, K, -v, p)
        _heap_sort_best_first(tv, tp, ts)
        _heap_sort_best_first(bk, bp, bs)
        na = count[u]
        if na == 0:
            mean[u] = mb
            m2[u] = m2b
            vmin[u] = lo
            vmax[u] = hi
        else:
            tot = na + cnt
            delta = mb - mean[u]
            mean[u] += delta * (np.float64(cnt) / tot)
            m2[u] += m2b + delta * delta * (np.float64(na) * cnt / tot)
            vmin[u] = min(vmin[u], lo)
            vmax[u] = max(vmax[u], hi)
        count[u] = na + cnt
