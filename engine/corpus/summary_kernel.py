"""The compiled loop behind :class:`engine.corpus.summary.Summary` (numba; plain Python when
numba cannot be imported, same results, much slower).

One call folds a block of tokens ``x`` (``[n, units]``, float32 or float64, one row per token)
into the running statistics of every unit: one pass over the rows for the block's mean, one for
the deviations, the histogram and the top-k heaps.  Kept at module level so that numba's on-disk cache hits.

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
    """Fold ``x[t, u]`` (token ``start + t``, unit ``u``) into every unit's statistics.  Two
    passes over the rows (the block's mean, then deviations, bins and heaps), units innermost."""
    n, U = x.shape
    B = hist.shape[1]
    K = top_val.shape[1]
    cnt = np.zeros(U, np.int64)
    s = np.zeros(U)
    lo = np.full(U, math.inf)
    hi = np.full(U, -math.inf)
    for t in range(n):
        for u in range(U):
            v = np.float64(x[t, u])
            if math.isfinite(v):
                cnt[u] += 1
                s[u] += v
                lo[u] = min(lo[u], v)
                hi[u] = max(hi[u], v)
            else:
                nonfinite[u] += 1
    mb = np.zeros(U)
    inv_w = np.zeros(U)
    ts = np.zeros(U, np.int64)
    bs = np.zeros(U, np.int64)
    for u in range(U):
        if cnt[u] == 0:
            continue
        mb[u] = s[u] / cnt[u]
        # histogram range: the smallest power of two 2**e > max|x| (e >= emin)
        big = max(abs(lo[u]), abs(hi[u]))
        e = emin
        if big > 0.0:
            e = max(emin, math.frexp(big)[1])
        if e > hexp[u]:
            fold_histogram(hist[u], e - hexp[u])
            hexp[u] = e
        inv_w[u] = B / (2.0 ** (hexp[u] + 1))  # a power of two: x * inv_w is exact
        size = min(count[u], K)
        _reverse(top_val[u], top_pos[u], size)
        _reverse(bot_key[u], bot_pos[u], size)
        ts[u] = size
        bs[u] = size
    half = B // 2
    m2b = np.zeros(U)
    # the worst value each full heap holds: anything below it cannot get in (a cheap first test)
    rt = np.full(U, -math.inf)
    rb = np.full(U, -math.inf)
    for u in range(U):
        if ts[u] == K:
            rt[u] = top_val[u, 0]
        if bs[u] == K:
            rb[u] = bot_key[u, 0]
    for t in range(n):
        p = start + t
        for u in range(U):
            v = np.float64(x[t, u])
            if not math.isfinite(v):
                continue
            d = v - mb[u]
            m2b[u] += d * d
            j = int(math.floor(v * inv_w[u])) + half
            if j < 0:
                j = 0
            elif j >= B:
                j = B - 1
            hist[u, j] += 1
            if v >= rt[u] and (ts[u] < K or _worse(top_val[u, 0], top_pos[u, 0], v, p)):
                ts[u] = _offer(top_val[u], top_pos[u], ts[u], K, v, p)
                if ts[u] == K:
                    rt[u] = top_val[u, 0]
            if -v >= rb[u] and (bs[u] < K or _worse(bot_key[u, 0], bot_pos[u, 0], -v, p)):
                bs[u] = _offer(bot_key[u], bot_pos[u], bs[u], K, -v, p)
                if bs[u] == K:
                    rb[u] = bot_key[u, 0]
    for u in range(U):
        if cnt[u] == 0:
            continue
        _heap_sort_best_first(top_val[u], top_pos[u], ts[u])
        _heap_sort_best_first(bot_key[u], bot_pos[u], bs[u])
        na = count[u]
        if na == 0:
            mean[u] = mb[u]
            m2[u] = m2b[u]
            vmin[u] = lo[u]
            vmax[u] = hi[u]
        else:
            tot = na + cnt[u]
            delta = mb[u] - mean[u]
            mean[u] += delta * (np.float64(cnt[u]) / tot)
            m2[u] += m2b[u] + delta * delta * (np.float64(na) * cnt[u] / tot)
            vmin[u] = min(vmin[u], lo[u])
            vmax[u] = max(vmax[u], hi[u])
        count[u] = na + cnt[u]
