"""Features of the bundled models' inputs and unit-feature correlations.

The training scripts use this module to find the units a model card names, and
``tests/test_assets.py`` uses the very same functions to re-derive every claim from the shipped
weights, so a card cannot drift from its model.  Numpy only (no torch, no engine import):
everything here takes arrays, e.g. ``trace["layers.1.c"]`` from ``engine.run``.

Every per-character feature is the state *after* reading that character, because that is
what a recurrent unit at that step can know: the opening quote of a string is already
"inside", the closing quote is "outside" again; a ``(`` already counts in the bracket depth.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "PYTHON_FEATURES", "python_features", "dyck_depth", "dyck_stack_top", "pearson", "unit_correlations",
    "best_units", "unit_r", "bits_per_char", "unigram_entropy", "cross_entropy_bits",
]

#: the Python-text features the char-LSTM card reports, with one line each for the card
PYTHON_FEATURES = {
    "in_string": "inside a string literal (1 from the opening quote through the string's last character, "
                 "0 from its closing quote on; docstrings and f-strings included)",
    "indent": "indentation (in spaces, a tab to the next multiple of 8) of the current line once its first "
              "non-blank character is read; until then (at the newline and in the leading whitespace) that of the "
              "last non-blank line",
    "bracket_depth": "nesting depth of (), [] and {} outside strings and comments",
    "in_comment": "inside a # comment",
    "column": "characters since the last newline",
}

_PREFIX_CHARS = set("rRbBuUfF")
_VALID_PREFIXES = {"", "r", "u", "b", "f", "br", "rb", "fr", "rf"}
_IDENT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = set(_OPEN.values())


def _string_prefix(text: str, i: int) -> str | None:
    """The string prefix letters just before the quote at ``i`` ("" for none), or None when the
    letters before it are the end of an identifier (``x"..."`` cannot happen in valid Python,
    but ``print"`` style junk must not be taken for a prefix)."""
    j = i
    while j > 0 and text[j - 1] in _PREFIX_CHARS and i - j < 2:
        j -= 1
    prefix = text[j:i]
    if j > 0 and text[j - 1] in _IDENT:  # letters belong to a longer identifier
        return "" if not prefix else None
    return prefix if prefix.lower() in _VALID_PREFIXES else None


def python_features(text: str) -> dict[str, np.ndarray]:
    """Per-character features of Python source (see :data:`PYTHON_FEATURES`).

    A small hand-written lexer (strings with prefixes, triple quotes and escapes; comments;
    brackets), so that the result does not depend on the running Python's ``tokenize`` (whose
    f-string tokens changed in 3.12).  f-strings count as strings as a whole, replacement
    fields included.  Text need not be valid Python: an unterminated single-quoted string
    ends at the newline, a stray closing bracket never makes the depth negative.
    """
    n = len(text)
    in_string = np.zeros(n, np.float32)
    in_comment = np.zeros(n, np.float32)
    depth = np.zeros(n, np.float32)
    indent = np.zeros(n, np.float32)
    column = np.zeros(n, np.float32)

    # layout features: independent of the lexer state
    col = 0
    width = 0  # leading whitespace read so far on this line
    current = 0  # the indentation in force: the last line whose code has started
    leading = True
    for i, ch in enumerate(text):
        if ch == "\n":
            col, width, leading = 0, 0, True
        else:
            col += 1
            if leading and ch == " ":
                width += 1
            elif leading and ch == "\t":
                width = (width // 8 + 1) * 8
            elif leading and ch in "\f\r":
                pass
            elif leading:
                leading = False
                current = width
        column[i] = col
        indent[i] = current

    # lexer
    d = 0
    i = 0
    while i < n:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            in_comment[i:j] = 1
            depth[i:j] = d
            i = j
            continue
        if ch in "'\"":
            prefix = _string_prefix(text, i)
            if prefix is not None:
                quote = ch * 3 if text.startswith(ch * 3, i) else ch
                j = i + len(quote)
                end = None
                while j < n:
                    c = text[j]
                    if c == "\\":  # escapes the next character (in raw strings too, for the quote)
                        j += 2
                        continue
                    if text.startswith(quote, j):
                        end = j
                        break
                    if c == "\n" and len(quote) == 1:
                        end = j  # unterminated: the newline ends it
                        break
                    j += 1
                if end is None:
                    end = n
                    close_len = 0
                elif text.startswith(quote, end):
                    close_len = len(quote)
                else:
                    close_len = 0
                in_string[i:end] = 1
                depth[i : min(end + close_len, n)] = d
                i = min(end + close_len, n)
                continue
        if ch in _OPEN:
            d += 1
        elif ch in _CLOSE:
            d = max(d - 1, 0)
        depth[i] = d
        i += 1
    return {"in_string": in_string, "indent": indent, "bracket_depth": depth, "in_comment": in_comment,
            "column": column}


def dyck_depth(text: str, pairs: str = "()[]") -> np.ndarray:
    """Nesting depth after each character of a bracket string; any other character (the
    newline between words) leaves the depth as it is."""
    opens = set(pairs[0::2])
    closes = set(pairs[1::2])
    out = np.zeros(len(text), np.float32)
    d = 0
    for i, ch in enumerate(text):
        if ch in opens:
            d += 1
        elif ch in closes:
            d = max(d - 1, 0)
        out[i] = d
    return out


def dyck_stack_top(text: str, pairs: str = "()[]") -> np.ndarray:
    """The type of the innermost open bracket after each character: +1 for the first pair's
    bracket, -1 for the second's, 0 when nothing is open.  This is what decides which closing
    bracket is valid next."""
    sign = {pairs[0]: 1.0, pairs[2]: -1.0}
    closes = set(pairs[1::2])
    stack: list[float] = []
    out = np.zeros(len(text), np.float32)
    for i, ch in enumerate(text):
        if ch in sign:
            stack.append(sign[ch])
        elif ch in closes and stack:
            stack.pop()
        out[i] = stack[-1] if stack else 0.0
    return out


# -- correlations ----------------------------------------------------------------------------


def pearson(acts: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``acts`` [N, U] with ``feature`` [N] (float64
    arithmetic); a constant unit or feature gives 0."""
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    f = np.asarray(feature, dtype=np.float64)
    if a.shape[0] != f.shape[0]:
        raise ValueError(f"{a.shape[0]} activations for {f.shape[0]} feature values")
    a = a - a.mean(axis=0)
    f = f - f.mean()
    num = f @ a
    den = np.sqrt((a * a).sum(axis=0) * (f @ f))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return r


def unit_correlations(arrays: Mapping[str, np.ndarray], feature: np.ndarray, probes: Iterable[str],
                      mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{probe: r[U]}``: each unit's correlation with ``feature`` over the tokens in ``mask``
    (all when None).  ``arrays`` is a Trace's arrays or any ``{probe: [N, U]}`` mapping."""
    out = {}
    for p in probes:
        a = np.asarray(arrays[p])
        f = np.asarray(feature)
        if mask is not None:
            a, f = a[mask], f[mask]
        out[p] = pearson(a, f)
    return out


def best_units(arrays: Mapping[str, np.ndarray], feature: np.ndarray, probes: Sequence[str], k: int = 1,
               mask: np.ndarray | None = None) -> list[dict]:
    """The ``k`` units with the largest |r| over all ``probes``, best first:
    ``[{"probe", "unit", "r"}]``."""
    rs = unit_correlations(arrays, feature, probes, mask)
    flat = [(abs(float(r[u])), p, int(u), float(r[u])) for p, r in rs.items() for u in range(len(r))]
    flat.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"probe": p, "unit": u, "r": r} for _, p, u, r in flat[:k]]


def max_abs_r(arrays: Mapping[str, np.ndarray], feature: np.ndarray, probes: Sequence[str],
              mask: np.ndarray | None = None) -> float:
    """The largest |r| of any unit in ``probes`` (a baseline: what chance alignment reaches)."""
    rs = unit_correlations(arrays, feature, probes, mask)
    return float(max(np.max(np.abs(r)) for r in rs.values()))


def unit_r(arrays: Mapping[str, np.ndarray], probe: str, unit: int, feature: np.ndarray,
           mask: np.ndarray | None = None) -> float:
    """One unit's correlation with ``feature``: what a test re-derives for a card's claim."""
    a = np.asarray(arrays[probe])[:, unit]
    f = np.asarray(feature)
    if mask is not None:
        a, f = a[mask], f[mask]
    return float(pearson(a, f)[0])


# -- losses ----------------------------------------------------------------------------------


def cross_entropy_bits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position cross-entropy in bits of ``targets`` [N] under ``logits`` [N, V]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = np.asarray(targets, dtype=np.int64)
    return -logp[np.arange(len(t)), t] / math.log(2)


def bits_per_char(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean bits per character of predicting ``ids[1:]`` from ``logits[:-1]`` (one sequence)."""
    return float(cross_entropy_bits(np.asarray(logits)[:-1], np.asarray(ids)[1:]).mean())


def unigram_entropy(ids: np.ndarray, vocab_size: int | None = None) -> float:
    """Entropy in bits of the empirical symbol distribution of ``ids``: what a model that
    ignores context entirely can reach at best on this text."""
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=vocab_size or 0).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
