"""Neuron search: which units follow a feature of the input, and where a unit fires most.

Features are one number per token (``[tokens]``), built from the input:

- :func:`regex_feature`: 1 for tokens inside a match of a regular expression over the text
  (``"[^"]*"`` marks string literals), 0 elsewhere;
- :func:`class_feature`: 1 for tokens of a class (letter, digit, space, punctuation, newline);
- :func:`input_feature`: one column of a numeric input.

:func:`rank_units` orders a probe's units by their correlation with a feature (Pearson, or the
point-biserial coefficient for a 0/1 feature, which is the same number computed from group
means).  :func:`top_activations` and :func:`context` find a unit's strongest positions and the
text around them.  Pure numpy; sequences (``offsets``) are never crossed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_CHUNK = 8192

TOKEN_CLASSES = ("letter", "digit", "space", "punctuation", "newline")
LETTER, DIGIT, SPACE, PUNCTUATION, NEWLINE = range(5)


# -- features ---------------------------------------------------------------------------------


def token_class(text: str) -> int:
    """The class of one token's text: newline if it holds a line break, space if it is other
    whitespace, else by its first non-space character: letter, digit or punctuation (anything
    else, including an empty token)."""
    if "\n" in text or "\r" in text:
        return NEWLINE
    s = text.strip()
    if not s:
        return SPACE if text else PUNCTUATION
    c = s[0]
    if c.isalpha():
        return LETTER
    if c.isdigit():
        return DIGIT
    return PUNCTUATION


def token_classes(token_text) -> np.ndarray:
    """int8 [tokens]: :func:`token_class` of every token (indices into ``TOKEN_CLASSES``)."""
    return np.fromiter((token_class(t) for t in token_text), dtype=np.int8, count=len(token_text))


def class_feature(token_text, cls: int | str) -> np.ndarray:
    """float32 [tokens]: 1 where the token is of class ``cls`` (index or name)."""
    if isinstance(cls, str):
        cls = TOKEN_CLASSES.index(cls)
    return (token_classes(token_text) == cls).astype(np.float32)


def regex_feature(token_text, pattern: str | re.Pattern, offsets=None, flags: int = 0) -> np.ndarray:
    """float32 [tokens]: 1 for tokens that overlap a match of ``pattern`` in their sequence's
    text, 0 elsewhere.  Empty matches mark nothing.  Raises ``re.error`` for a bad pattern."""
    rx = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
    n = len(token_text)
    offsets = np.asarray([0, n] if offsets is None else offsets, dtype=np.int64)
    out = np.zeros(n, dtype=np.float32)
    lengths = np.fromiter((len(t) for t in token_text), dtype=np.int64, count=n)
    for s in range(len(offsets) - 1):
        a, b = int(offsets[s]), int(offsets[s + 1])
        if a == b:
            continue
        text = "".join(token_text[a:b])
        ends = np.cumsum(lengths[a:b])  # token j covers characters [ends[j] - len_j, ends[j])
        starts = ends - lengths[a:b]
        covered = np.zeros(len(text) + 1, dtype=np.int64)  # +1 at match start, -1 at match end
        for m in rx.finditer(text):
            if m.end() > m.start():
                covered[m.start()] += 1
                covered[m.end()] -= 1
        inside = np.concatenate([[0], np.cumsum(np.cumsum(covered)[:-1] > 0)])  # prefix count of matched chars
        hit = inside[ends] - inside[starts] > 0
        out[a:b] = hit
    return out


def input_feature(inputs, column: int) -> np.ndarray:
    """float64 [tokens]: column ``column`` of a numeric input [tokens, features]."""
    a = np.asarray(inputs)
    if a.ndim == 1:
        a = a[:, None]
    if not 0 <= column < a.shape[1]:
        raise IndexError(f"input column {column} out of range (the input has {a.shape[1]})")
    return a[:, column].astype(np.float64)


# -- correlation --------------------------------------------------------------------------------


def _as_units(acts) -> np.ndarray:
    a = np.asarray(acts)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim > 2:
        return a.reshape(a.shape[0], -1)
    return a


def _column_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and sums of squared deviations, float64, two passes in blocks."""
    n = x.shape[0]
    mean = np.zeros(x.shape[1])
    for s in range(0, n, _CHUNK):
        mean += x[s : s + _CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n
    ss = np.zeros(x.shape[1])
    for s in range(0, n, _CHUNK):
        d = x[s : s + _CHUNK].astype(np.float64) - mean
        ss += np.einsum("ij,ij->j", d, d)
    return mean, ss


def pearson(acts, feature) -> np.ndarray:
    """Pearson correlation of every unit (column of ``acts`` [tokens, units]) with ``feature``
    [tokens].  NaN where a unit or the feature is constant (no correlation is defined)."""
    x = _as_units(acts)
    f = np.asarray(feature, dtype=np.float64).ravel()
    if f.shape[0] != x.shape[0]:
        raise ValueError(f"feature has {f.shape[0]} values for {x.shape[0]} tokens")
    if x.shape[0] < 2:
        return np.full(x.shape[1], np.nan)
    fc = f - f.mean()
    sff = float(fc @ fc)
    mean, sxx = _column_stats(x)
    sxy = np.zeros(x.shape[1])
    for s in range(0, x.shape[0], _CHUNK):
        sxy += fc[s : s + _CHUNK] @ (x[s : s + _CHUNK].astype(np.float64) - mean)
    denom = np.sqrt(sxx * sff)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, sxy / np.where(denom > 0, denom, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def point_biserial(acts, mask) -> np.ndarray:
    """Point-biserial correlation of every unit with a boolean feature:
    ``(M1 - M0) / s * sqrt(p (1 - p))`` with group means ``M1``/``M0``, the population standard
    deviation ``s`` and the fraction ``p`` of true tokens.  Equal to Pearson's r with the 0/1
    feature.  NaN where a unit is constant or the mask is all true or all false."""
    x = _as_units(acts)
    m = np.asarray(mask).ravel().astype(bool)
    if m.shape[0] != x.shape[0]:
        raise ValueError(f"mask has {m.shape[0]} values for {x.shape[0]} tokens")
    n, n1 = x.shape[0], int(m.sum())
    if n1 == 0 or n1 == n:
        return np.full(x.shape[1], np.nan)
    mean, ss = _column_stats(x)
    m1 = x[m].sum(axis=0, dtype=np.float64) / n1
    m0 = (mean * n - m1 * n1) / (n - n1)
    sd = np.sqrt(ss / n)
    p = n1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(sd > 0, (m1 - m0) / np.where(sd > 0, sd, 1.0) * np.sqrt(p * (1 - p)), np.nan)
    return np.clip(r, -1.0, 1.0)


def is_binary(feature) -> bool:
    f = np.asarray(feature)
    return bool(np.all((f == 0) | (f == 1)))


def rank_units(acts, feature, *, method: str = "auto", order: str = "abs",
               k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Units ordered by correlation with ``feature``, strongest first.

    ``method``: ``"pearson"``, ``"point_biserial"`` (the feature must be 0/1) or ``"auto"``
    (point-biserial for a 0/1 feature, else Pearson).  ``order``: ``"abs"`` (by |r|), ``"pos"``
    (most positive first) or ``"neg"`` (most negative first).  Units with undefined r (NaN)
    come last.  Returns ``(units, r)`` (int64, float64), at most ``k`` of them.
    """
    if method == "auto":
        method = "point_biserial" if is_binary(feature) else "pearson"
    if method == "pearson":
        r = pearson(acts, feature)
    elif method == "point_biserial":
        if not is_binary(feature):
            raise ValueError("point-biserial correlation needs a 0/1 feature")
        r = point_biserial(acts, np.asarray(feature) == 1)
    else:
        raise ValueError(f"method must be 'auto', 'pearson' or 'point_biserial', got {method!r}")
    key = {"abs": -np.abs(r), "pos": -r, "neg": r}.get(order)
    if key is None:
        raise ValueError(f"order must be 'abs', 'pos' or 'neg', got {order!r}")
    key = np.where(np.isnan(key), np.inf, key)
    units = np.lexsort((np.arange(r.size), key))
    if k is not None:
        units = units[:k]
    return units.astype(np.int64), r[units]


# -- top activations ---------------------------------------------------------------------------


def top_activations(values, k: int = 10, *, mode: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` positions where a unit's ``values`` [tokens] are largest (``mode="max"``),
    smallest (``"min"``) or largest in magnitude (``"abs"``), strongest first (ties: earlier
    position first).  Returns ``(positions, values)``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    key = {"max": -v, "min": v, "abs": -np.abs(v)}.get(mode)
    if key is None:
        raise ValueError(f"mode must be 'max', 'min' or 'abs', got {mode!r}")
    key = np.where(np.isnan(key), np.inf, key)  # NaN values come last
    k = max(0, min(int(k), v.size))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if k < v.size:
        cand = np.argpartition(key, k - 1)[:k]
        # include every tie of the k-th key so the earliest positions win
        cand = np.flatnonzero(key <= key[cand].max())
    else:
        cand = np.arange(v.size)
    pos = cand[np.lexsort((cand, key[cand]))][:k]
    return pos.astype(np.int64), v[pos]


@dataclass(frozen=True)
class Context:
    position: int  # token index in the trace
    value: float
    left: str  # text of up to ``width`` tokens before, within the same sequence
    token: str
    right: str


def context(token_text, position: int, width: int = 20, offsets=None) -> tuple[str, str, str]:
    """``(left, token, right)``: the text of up to ``width`` tokens either side of
    ``position``, without crossing into another sequence."""
    n = len(token_text)
    if not 0 <= position < n:
        raise IndexError(f"position {position} out of range ({n} tokens)")
    offsets = np.asarray([0, n] if offsets is None else offsets, dtype=np.int64)
    s = int(np.searchsorted(offsets, position, side="right")) - 1
    a, b = int(offsets[s]), int(offsets[s + 1])
    lo, hi = max(a, position - width), min(b, position + width + 1)
    return ("".join(token_text[lo:position]), token_text[position], "".join(token_text[position + 1 : hi]))


def top_contexts(values, token_text, k: int = 10, *, width: int = 20, offsets=None,
                 mode: str = "max") -> list[Context]:
    """:func:`top_activations` with the text around each position (empty strings when there
    is no text, as for numeric inputs)."""
    pos, vals = top_activations(values, k, mode=mode)
    out = []
    for p, v in zip(pos.tolist(), vals.tolist()):
        left, tok, right = context(token_text, p, width, offsets) if token_text is not None else ("", "", "")
        out.append(Context(p, v, left, tok, right))
    return out
