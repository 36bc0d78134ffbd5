"""Load the compiled CPU loops before the first edit needs them.

Even with numba's on-disk cache hitting, the first compiled call in a process costs about
0.6 s on a quiet 2-core machine (importing numba, building its typing and target context,
reading the cached machine code), against ~0.05 s for an edit of the bundled char-LSTM: the
window calls :func:`start_warm_up` when it starts, so that the user's first edit is as fast
as the next (``benchmarks/first_edit.py`` measures both).  On a cold cache (the first start
after installing) it compiles instead, once.

Nothing runs: each kernel is compiled for the argument types a real run passes (dtype, rank,
C order), which loads it from the cache; ``tests/test_numba_cache.py`` checks that a run after
:func:`warm_up` compiles nothing.  Only the kernels of the bundled examples' families are
warmed: the LSTM's edited stretch and the Mamba scan.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from .family import numba_available


def warm_up(dtype: torch.dtype = torch.float32) -> bool:
    """Load (or, the first time, compile) the LSTM stretch and the Mamba scan for ``dtype``
    without running them; False when numba cannot run (the torch loops need no warming)."""
    if dtype not in (torch.float32, torch.float64) or not numba_available():
        return False
    from numba import typeof

    from .numba_kernels import lstm_stretch, mamba_scan

    f = np.float32 if dtype == torch.float32 else np.float64
    real, ids = typeof(np.zeros((1,) * 3, f)), typeof(np.zeros(1, np.int64))
    matrix = typeof(np.zeros((1, 1), f))
    # U; h, c, W; the edit table (site, op, act, offsets, lengths, units, values); six outputs
    lstm_stretch.compile((real, matrix, matrix, matrix, ids, ids, typeof(np.zeros((1, 1, 1), np.bool_)),
                          ids, ids, ids, typeof(np.zeros(1, f))) + (real,) * 6)
    states = typeof(np.zeros((1,) * 4, f))
    # dA; dt, Bm, Cm, u, S, y; states; write_states
    mamba_scan.compile((states,) + (real,) * 6 + (states, typeof(True)))
    return True


def start_warm_up(dtype: torch.dtype = torch.float32) -> threading.Thread:
    """:func:`warm_up` on a background thread (started, returned): the window calls it at
    start-up so that the loops are ready when the user first edits.  numba's compiler lock
    makes a run that needs a kernel meanwhile wait for it rather than load it twice."""
    thread = threading.Thread(target=warm_up, args=(dtype,), name="seqscope-numba-warm-up", daemon=True)
    thread.start()
    return thread
