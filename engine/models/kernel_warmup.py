"""Load the compiled CPU loops before the first edit needs them.

Even with numba's on-disk cache hitting, the first compiled call in a process costs about
0.6 s on this machine (importing numba, then building its typing and target context, then
reading the cached machine code), against ~0.05 s for an edit of the bundled char-LSTM: the
window calls :func:`warm_up` on its worker thread once a model is open, so that the user's
first edit is as fast as the next (``benchmarks/first_edit.py`` measures both).  On a cold
cache (the first run after installing) it compiles instead, once.

The arrays are tiny but of the same kinds (dtype, rank, C order) as a real run's, so that the
signatures loaded are the ones a run asks for (``tests/test_numba_cache.py`` checks that a run
after :func:`warm_up` compiles nothing).  Only the kernels of the bundled examples' families
are warmed: the LSTM's edited stretch and the Mamba scan.
"""
from __future__ import annotations

import numpy as np
import torch

from .family import numba_available, run_parallel_numba


def warm_up(dtype: torch.dtype = torch.float32) -> bool:
    """Load (or, the first time, compile) the LSTM stretch and the Mamba scan for ``dtype``;
    False when numba cannot run (the torch loops need no warming)."""
    if dtype not in (torch.float32, torch.float64) or not numba_available():
        return False
    from .numba_kernels import lstm_stretch, mamba_scan

    f = np.float32 if dtype == torch.float32 else np.float64
    ids = np.zeros(1, np.int64)
    # one step of one sequence of a 1-unit LSTM, with one "zero" edit of h (inactive)
    lstm_stretch(np.zeros((1, 1, 4), f), np.zeros((1, 1), f), np.zeros((1, 1), f), np.zeros((1, 4), f),
                 ids, ids, np.zeros((1, 1, 1), np.bool_), ids, ids, ids, np.zeros(1, f),
                 *(np.zeros((1, 1, 1), f) for _ in range(6)))
    # one step of one channel of a 1-state Mamba scan, without states
    one = np.zeros((1, 1, 1), f)
    run_parallel_numba(mamba_scan, 1, np.zeros((1, 1, 1, 1), f), one, one.copy(), one.copy(), one.copy(),
                       one.copy(), one.copy(), np.zeros((1, 1, 1, 1), f), False)
    return True
