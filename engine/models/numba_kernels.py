"""The compiled CPU loops (numba), all at module level so that numba's on-disk cache hits.

numba keys a cached function by its bytecode and by the pickled values of its closure
variables.  The kernels used to be built inside functions on first use, and the LSTM stretch
and RWKV drivers closed over another compiled function (``apply``, ``block``): a compiled
function pickles with an id that is new in every process, so the key never matched, every
process compiled again (5-12 s before the first edit) and wrote one more ``.nbc`` file.  Here
every kernel is a plain module-level function; the ones they call are module globals, which
are not part of the key.  ``tests/test_numba_cache.py`` checks that a second process compiles
nothing.

The cache lies beside this file (``__pycache__``) when that folder is writable, else in the
user's cache folder (numba's own fallback, also the one a PyInstaller bundle uses), or in
``NUMBA_CACHE_DIR`` when that is set.

This module imports numba; importing it fails when numba is missing or broken, and
:func:`engine.models.family.numba_available` then says False (the torch loops run instead).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# -- LSTM: a stretch of edited steps (engine/models/lstm_stretch.py) --------------------------


@njit(nogil=True, cache=True)
def lstm_apply_edits(x, s, t, b, site, op, act, uoff, ulen, units, vals):  # pragma: no cover - compiled
    """The edits of site ``s`` active at step ``t`` of sequence ``b``, applied to ``x`` in place."""
    for e in range(site.shape[0]):
        if site[e] != s or not act[e, t, b]:
            continue
        for q in range(ulen[e]):
            j = units[uoff[e] + q]
            v = vals[uoff[e] + q]
            if op[e] == 0:
                x[j] = 0.0
            elif op[e] == 1:
                x[j] = v
            elif op[e] == 2:
                x[j] = x[j] + v
            else:
                x[j] = x[j] * v


@njit(nogil=True, cache=True)
def lstm_stretch(U, h, c, W, site, op, act, uoff, ulen, units, vals, ys, cs, gi, gf, gg, go):  # pragma: no cover
    n, B, G = U.shape
    H = G // 4
    K = W.shape[0]
    pre = np.empty(G, dtype=U.dtype)
    for t in range(n):
        for b in range(B):
            for j in range(G):
                pre[j] = 0.0
            for k in range(K):
                hk = h[b, k]
                for j in range(G):
                    pre[j] += hk * W[k, j]
            for j in range(H):
                gi[t, b, j] = 1.0 / (1.0 + np.exp(-(U[t, b, j] + pre[j])))
                gf[t, b, j] = 1.0 / (1.0 + np.exp(-(U[t, b, H + j] + pre[H + j])))
                go[t, b, j] = 1.0 / (1.0 + np.exp(-(U[t, b, 2 * H + j] + pre[2 * H + j])))
                gg[t, b, j] = np.tanh(U[t, b, 3 * H + j] + pre[3 * H + j])
            lstm_apply_edits(gi[t, b], 0, t, b, site, op, act, uoff, ulen, units, vals)
            lstm_apply_edits(gf[t, b], 1, t, b, site, op, act, uoff, ulen, units, vals)
            lstm_apply_edits(gg[t, b], 2, t, b, site, op, act, uoff, ulen, units, vals)
            lstm_apply_edits(go[t, b], 3, t, b, site, op, act, uoff, ulen, units, vals)
            for j in range(H):
                cs[t, b, j] = gi[t, b, j] * gg[t, b, j] + gf[t, b, j] * c[b, j]
            lstm_apply_edits(cs[t, b], 4, t, b, site, op, act, uoff, ulen, units, vals)
            for j in range(H):
                ys[t, b, j] = go[t, b, j] * np.tanh(cs[t, b, j])
            lstm_apply_edits(ys[t, b], 5, t, b, site, op, act, uoff, ulen, units, vals)
            for j in range(H):
                h[b, j] = ys[t, b, j]
                c[b, j] = cs[t, b, j]


# -- Mamba: the selective scan (engine/models/mamba.py) ----------------------------------------


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def mamba_scan(dA, dt, Bm, Cm, u, S, y, states, write_states):  # pragma: no cover - compiled
    # dA [n,B,D,N]; dt, u, y [n,B,D]; Bm, Cm [n,B,N]; S [B,D,N] updated in place
    n, nb, D = dt.shape
    N = S.shape[2]
    BLK = 32
    nblk = (D + BLK - 1) // BLK
    for job in prange(nb * nblk):
        b = job // nblk
        c0 = (job % nblk) * BLK
        c1 = min(c0 + BLK, D)
        for t in range(n):
            for c in range(c0, c1):
                du = dt[t, b, c] * u[t, b, c]
                acc = S[b, c, 0] * 0
                for k in range(N):
                    s = dA[t, b, c, k] * S[b, c, k] + du * Bm[t, b, k]
                    S[b, c, k] = s
                    acc += s * Cm[t, b, k]
                y[t, b, c] = acc
                if write_states:
                    for k in range(N):
                        states[t, b, c, k] = S[b, c, k]


# -- minGRU / minLSTM / RG-LRU: h_t = coef_t h_(t-1) + inp_t (engine/models/mingru.py) ---------


@njit(cache=True)
def linear_recurrence(coef, inp, h, hs):  # pragma: no cover - compiled
    n, B, D = coef.shape
    for t in range(n):
        for b in range(B):
            for c in range(D):
                v = coef[t, b, c] * h[b, c] + inp[t, b, c]
                h[b, c] = v
                hs[t, b, c] = v


# -- RWKV-4: the WKV recurrence (engine/models/rwkv_scan.py) -----------------------------------


@njit(cache=True)
def wkv_block(w, u, k, v, S, out, states, write_states, b, c0, c1):  # pragma: no cover - compiled
    # w, u [nw, bw, A] (nw in {1, n}, bw in {1, B}); k, v, out [n, B, A]; S [3, B, A] in place
    n = k.shape[0]
    tw, bw = w.shape[0] > 1, w.shape[1] > 1
    tu, bu = u.shape[0] > 1, u.shape[1] > 1
    jw, ju = (b if bw else 0), (b if bu else 0)
    for t in range(n):
        iw, iu = (t if tw else 0), (t if tu else 0)
        for c in range(c0, c1):
            num, den, mx = S[0, b, c], S[1, b, c], S[2, b, c]
            kt, vt = k[t, b, c], v[t, b, c]
            ku = kt + u[iu, ju, c]
            q = max(mx, ku)
            e1 = np.exp(mx - q)
            e2 = np.exp(ku - q)
            out[t, b, c] = (e1 * num + e2 * vt) / (e1 * den + e2)
            mw = mx + w[iw, jw, c]
            q = max(mw, kt)
            e1 = np.exp(mw - q)
            e2 = np.exp(kt - q)
            num = e1 * num + e2 * vt
            den = e1 * den + e2
            S[0, b, c] = num
            S[1, b, c] = den
            S[2, b, c] = q
            if write_states:
                states[t, b, c, 0] = num
                states[t, b, c, 1] = den
                states[t, b, c, 2] = q


@njit(cache=True)
def wkv_serial(w, u, k, v, S, out, states, write_states, blk):  # pragma: no cover - compiled
    nb, A = k.shape[1], k.shape[2]
    nblk = (A + blk - 1) // blk
    for job in range(nb * nblk):
        c0 = (job % nblk) * blk
        wkv_block(w, u, k, v, S, out, states, write_states, job // nblk, c0, min(c0 + blk, A))


@njit(parallel=True, cache=True)
def wkv_parallel(w, u, k, v, S, out, states, write_states, blk):  # pragma: no cover - compiled
    nb, A = k.shape[1], k.shape[2]
    nblk = (A + blk - 1) // blk
    for job in prange(nb * nblk):
        c0 = (job % nblk) * blk
        wkv_block(w, u, k, v, S, out, states, write_states, job // nblk, c0, min(c0 + blk, A))


#: every compiled function, for tests that read their cache statistics
KERNELS = (lstm_apply_edits, lstm_stretch, mamba_scan, linear_recurrence, wkv_block, wkv_serial, wkv_parallel)
