"""``njit`` for the corpus kernels: numba's, or (numba missing or broken) a stand-in that leaves
the function as it is, so the same code runs interpreted (``COMPILED`` says which)."""
from __future__ import annotations

try:
    from numba import njit
    COMPILED = True
except Exception:  # pragma: no cover - numba missing or broken: the same code, interpreted
    COMPILED = False

    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

__all__ = ["COMPILED", "njit"]
