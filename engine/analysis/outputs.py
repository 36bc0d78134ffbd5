"""Next-token predictions from logits: softmax, top-k, and before/after comparisons.

Pure numpy.  Logits are [tokens, classes]; the prediction at step ``t`` is for token ``t + 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def top_k(probs, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of a 1-D probability vector, most probable first
    (ties broken by the lower class id).  Returns ``(ids, probs)``."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    k = max(0, min(int(k), p.size))
    order = np.lexsort((np.arange(p.size), -p))[:k]
    return order, p[order]


@dataclass(frozen=True)
class Prediction:
    """One row of a before/after comparison."""

    rank: int
    before_id: int
    before_p: float
    after_id: int
    after_p: float
    after_change: float  # p_after(after_id) - p_before(after_id)


def compare(before_logits, after_logits, k: int = 10) -> list[Prediction]:
    """Top-``k`` predictions at one step before and after an edit, side by side.

    Row ``r`` holds the ``r``-th most probable class before and the ``r``-th after, and how much
    the after-class's probability changed.
    """
    pb = softmax(np.asarray(before_logits).ravel())
    pa = softmax(np.asarray(after_logits).ravel())
    if pb.shape != pa.shape:
        raise ValueError(f"logits differ in size: {pb.shape} vs {pa.shape}")
    ib, vb = top_k(pb, k)
    ia, va = top_k(pa, k)
    return [Prediction(r, int(ib[r]), float(vb[r]), int(ia[r]), float(va[r]), float(va[r] - pb[ia[r]]))
            for r in range(len(ib))]
