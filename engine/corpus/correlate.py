"""Every unit of a probe ranked by how well it follows a feature over a whole corpus.

Features (one number per token, see :func:`feature`):

- ``regex``: 1 for tokens inside a match of a regular expression, 0 elsewhere.  The pattern
  runs over each sequence's text (its tokens' texts joined; a match never crosses sequences);
  a token is inside when at least one of its characters is part of a non-empty match (a
  character corpus: the character itself; a subword token: any of its characters).  As the
  neuron search does it (:func:`engine.analysis.neurons.regex_feature`).
- ``token class``: 1 for tokens of the class: ``letter``, ``digit``, ``space``,
  ``punctuation``, ``newline`` (:func:`engine.analysis.neurons.token_class`: a token's class is
  decided by its first non-space character), and ``upper`` / ``lower`` (the token has letters
  and all of them are upper / lower case).
- ``labels``: one number per token from a file: ``.npy`` (a 1-D numeric array) or text (numbers
  separated by whitespace), as many as the corpus has tokens.  Used as float32; a label that
  float32 cannot hold exactly is refused.

Scores per unit, over the tokens where the unit's value is finite:

- Pearson's r, from **exact** sums (:mod:`engine.corpus.exact_sums`): Σx, Σx², Σxf, Σf, Σf²
  are exact rationals, ``r² = cov² / (var_x var_f)`` is computed exactly and rounded once, so
  ``r`` does not depend on how the corpus was cut into blocks (NaN for a constant unit or
  feature).
- AUC, for a 0/1 feature: P(value inside > value outside) + ½ P(equal), exact.  For probes
  stored as float16, from per-unit counts of each of the 65,536 float16 values (one pass);
  otherwise by sorting each unit's values (units taken in groups that fit ``AUC_BUDGET``).

Rankings: by |r| (``by_r``) and by |AUC - ½| (``by_auc``), strongest first, ties by smaller
unit, NaN last.  Streams the probe in blocks of tokens; memory: the feature (4 bytes per
token), the sums' tables (~40 KB per unit) and, for float16 AUC, 512 KB per unit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import Cancelled
from .exact_sums import ExactSums
from .reader import CorpusQueryError, CorpusReader, opened

TOKEN_CLASSES = ("letter", "digit", "space", "punctuation", "newline", "upper", "lower")
AUC_BUDGET = 256 << 20  # bytes for AUC's counts or sorted columns at once
TEXT_TOKENS = 1 << 20  # tokens of text read at once when building a feature
DEFAULT_N = 20


@dataclass(frozen=True)
class Feature:
    values: np.ndarray  # float32 [N]
    description: str
    binary: bool


# -- features ---------------------------------------------------------------------------------


def _sequence_groups(reader: CorpusReader):
    """(first sequence, last sequence + 1) groups of about TEXT_TOKENS tokens."""
    off = reader.offsets
    s = 0
    while s < reader.n_sequences:
        e = int(np.searchsorted(off, off[s] + TEXT_TOKENS, side="right")) - 1
        e = min(max(e, s + 1), reader.n_sequences)
        yield s, e
        s = e


def _need_text(reader: CorpusReader, what: str) -> None:
    if not reader.has_text:
        raise CorpusQueryError(f"this corpus has no text (a numeric corpus), so {what} cannot be computed; "
                          f"give --labels FILE instead")


def regex_values(reader: CorpusReader, pattern: str, should_stop=None) -> np.ndarray:
    from ..analysis.neurons import regex_feature

    _need_text(reader, "a regular-expression feature")
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise CorpusQueryError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    out = np.zeros(reader.n_tokens, np.float32)
    off = reader.offsets
    for s, e in _sequence_groups(reader):
        a, b = int(off[s]), int(off[e])
        out[a:b] = regex_feature(reader.texts(a, b), rx, off[s:e + 1] - a)
        if should_stop is not None and should_stop():
            raise Cancelled("the query was cancelled")
    return out


def _class_of(text: str, cls: str) -> bool:
    from ..analysis.neurons import TOKEN_CLASSES as BASE, token_class

    if cls in BASE:
        return token_class(text) == BASE.index(cls)
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    return all(c.isupper() for c in letters) if cls == "upper" else all(c.islower() for c in letters)


def class_values(reader: CorpusReader, cls: str, should_stop=None) -> np.ndarray:
    _need_text(reader, "a token-class feature")
    if cls not in TOKEN_CLASSES:
        raise CorpusQueryError(f"unknown token class {cls!r}; the classes are {', '.join(TOKEN_CLASSES)}")
    out = np.zeros(reader.n_tokens, np.float32)
    memo: dict[str, bool] = {}
    for a in range(0, reader.n_tokens, TEXT_TOKENS):
        b = min(reader.n_tokens, a + TEXT_TOKENS)
        texts = reader.texts(a, b)
        for t in set(texts) - memo.keys():
            memo[t] = _class_of(t, cls)
        out[a:b] = np.fromiter((memo[t] for t in texts), dtype=bool, count=b - a)
        if should_stop is not None and should_stop():
            raise Cancelled("the query was cancelled")
    return out


def label_values(path, n_tokens: int) -> np.ndarray:
    """Labels from ``.npy`` or a text file of numbers, checked against the corpus."""
    from ..limits import is_regular_file

    p = Path(path)
    if not is_regular_file(p):
        raise CorpusQueryError(f"no labels file {path}" if not p.exists() else f"{path} is not a regular file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CorpusQueryError(f"cannot read labels from {path}: {str(exc)[:160]}") from None
        if arr.dtype.kind not in "biuf":
            raise CorpusQueryError(f"{path} holds {arr.dtype} values; labels must be numbers")
        arr = np.asarray(arr).reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
        if arr.ndim != 1:
            raise CorpusQueryError(f"{path} has shape {arr.shape}; labels are one number per token (a 1-D array)")
    else:
        limit = max(1 << 20, n_tokens * 40)
        if p.stat().st_size > limit:
            raise CorpusQueryError(f"{path} is {p.stat().st_size:,} bytes, too large for {n_tokens:,} labels as text")
        try:
            arr = np.array(p.read_text(encoding="utf-8").split(), dtype=np.float64)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorpusQueryError(f"{path} is not a text file of numbers ({str(exc)[:100]})") from None
    if len(arr) != n_tokens:
        raise CorpusQueryError(f"{path} has {len(arr):,} labels for a corpus of {n_tokens:,} tokens (one per token)")
    f64 = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(f64)):
        raise CorpusQueryError(f"{path} holds NaN or infinite labels")
    f32 = f64.astype(np.float32)
    if not np.array_equal(f32.astype(np.float64), f64):
        raise CorpusQueryError(f"{path} holds labels float32 cannot represent exactly (e.g. "
                          f"{f64[np.flatnonzero(f32.astype(np.float64) != f64)[0]]!r}); round them to 7 digits")
    return f32


def feature(reader: CorpusReader, *, regex: str | None = None, token_class: str | None = None,
            labels=None, should_stop=None) -> Feature:
    """The feature named by exactly one of ``regex``, ``token_class``, ``labels``."""
    given = [x is not None for x in (regex, token_class, labels)]
    if sum(given) != 1:
        raise CorpusQueryError("give exactly one feature: a regex, a token class or a labels file")
    if regex is not None:
        return Feature(regex_values(reader, regex, should_stop), f"regex {regex!r}", True)
    if token_class is not None:
        return Feature(class_values(reader, token_class, should_stop), f"token class {token_class}", True)
    if isinstance(labels, (str, Path)):
        values, what = label_values(labels, reader.n_tokens), f"labels from {labels}"
    else:
        values, what = np.asarray(labels, dtype=np.float32), "labels"
        if values.shape != (reader.n_tokens,):
            raise CorpusQueryError(f"labels have shape {values.shape} for {reader.n_tokens:,} tokens")
    return Feature(values, what, bool(np.all((values == 0) | (values == 1))))


# -- scores ---------------------------------------------------------------------------------


def pearson_exact(s: dict) -> float:
    """r from exact sums (dict of n, x, xx, xf, f, ff), rounded once."""
    n = s["n"]
    cov = n * s["xf"] - s["x"] * s["f"]
    vx = n * s["xx"] - s["x"] * s["x"]
    vf = n * s["ff"] - s["f"] * s["f"]
    if n < 2 or vx <= 0 or vf <= 0:
        return math.nan
    r2 = cov * cov / (vx * vf)
    return math.copysign(math.sqrt(min(1.0, float(r2))), float(cov)) if cov else 0.0


def auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from counts of positives and negatives per value, values in increasing order."""
    P, Q = int(pos.sum()), int(neg.sum())
    if P == 0 or Q == 0:
        return math.nan
    below = np.cumsum(neg) - neg
    twice = 2 * int(np.dot(pos, below)) + int(np.dot(pos, neg))
    return float(Fraction(twice, 2 * P * Q))


def auc_sorted(values: np.ndarray, positive: np.ndarray) -> float:
    """AUC of one unit's values (finite ones only) by sorting the negatives."""
    ok = np.isfinite(values)
    pos, neg = values[ok & positive], np.sort(values[ok & ~positive])
    if not len(pos) or not len(neg):
        return math.nan
    lo = np.searchsorted(neg, pos, side="left")
    hi = np.searchsorted(neg, pos, side="right")
    twice = 2 * int(lo.sum()) + int((hi - lo).sum())
    return float(Fraction(twice, 2 * len(pos) * len(neg)))


def _half_keys(bits: np.ndarray) -> np.ndarray:
    """Order-preserving int32 keys of float16 bit patterns (-0 as +0); NaN/inf get -1."""
    b = bits.astype(np.int32)
    b[b == 0x8000] = 0
    key = np.where(b & 0x8000, 0xFFFF - b, b | 0x8000)
    key[(b & 0x7C00) == 0x7C00] = -1
    return key


class _HalfCounts:
    """Per-unit counts of each float16 value, for positives and negatives."""

    def __init__(self, units: np.ndarray):
        self.units = units
        self.pos = np.zeros((len(units), 65536), np.int64)
        self.neg = np.zeros((len(units), 65536), np.int64)

    def update(self, block: np.ndarray, positive: np.ndarray) -> None:
        keys = _half_keys(block[:, self.units].view(np.uint16))
        for j in range(len(self.units)):
            k = keys[:, j]
            ok = k >= 0
            self.pos[j] += np.bincount(k[ok & positive], minlength=65536)
            self.neg[j] += np.bincount(k[ok & ~positive], minlength=65536)

    def auc(self) -> list[float]:
        return [auc_from_counts(self.pos[j], self.neg[j]) for j in range(len(self.units))]


@dataclass(frozen=True)
class CorrelateResult:
    probe: str
    feature: str
    n_tokens: int
    positives: int | None  # tokens where a 0/1 feature is 1
    r: np.ndarray  # [units]
    auc: np.ndarray | None  # [units], for 0/1 features

    def ranking(self, by: str = "r", n: int | None = None) -> np.ndarray:
        """Units strongest first: by |r| or by |AUC - 0.5|; ties by smaller unit, NaN last."""
        score = np.abs(self.r) if by == "r" else np.abs(self.auc - 0.5)
        key = np.where(np.isnan(score), -np.inf, score)
        order = np.lexsort((np.arange(len(key)), -key))
        return order if n is None else order[:n]

    def to_dict(self, n: int | None = DEFAULT_N) -> dict:
        def rows(by):
            return [{"unit": int(u), "r": _num(self.r[u]), "auc": None if self.auc is None else _num(self.auc[u])}
                    for u in self.ranking(by, n)]
        return {"probe": self.probe, "feature": self.feature, "n_tokens": self.n_tokens,
                "positives": self.positives, "by_r": rows("r"),
                "by_auc": rows("auc") if self.auc is not None else None}


def _num(x) -> float | None:
    return None if not np.isfinite(x) else float(x)


def correlate(corpus, probe: str, *, regex: str | None = None, token_class: str | None = None, labels=None,
              progress=None, should_stop=None) -> CorrelateResult:
    """Every unit of ``probe`` scored against the feature (see the module doc)."""
    with opened(corpus) as reader:
        ds = reader.probe(probe)
        feat = feature(reader, regex=regex, token_class=token_class, labels=labels, should_stop=should_stop)
        U, N = reader.n_units(probe), reader.n_tokens
        f = feat.values
        positive = f == 1 if feat.binary else None
        half = ds.dtype == np.float16 and feat.binary
        groups = [np.arange(U)]
        if feat.binary:
            per_unit = 2 * 65536 * 8 if half else max(1, N) * 8
            size = max(1, AUC_BUDGET // per_unit)
            if not half and N * 8 > AUC_BUDGET:
                size = 0
            groups = [np.arange(a, min(U, a + size)) for a in range(0, U, size)] if size else []
        sums = ExactSums(U)
        counts = _HalfCounts(groups[0]) if half and groups else None
        passes = max(1, len(groups)) if half else 1
        done = 0
        for start, block in reader.blocks(probe):
            n = len(block)
            sums.update(block, f[start:start + n])
            if counts is not None:
                counts.update(block, positive[start:start + n])
            done += n
            if progress is not None:
                progress(done, N * passes)
            if should_stop is not None and should_stop():
                raise Cancelled("the query was cancelled")
        r = np.array([pearson_exact(sums.values(u)) for u in range(U)])
        auc = None
        if feat.binary:
            auc = np.full(U, np.nan)
            if half:
                auc[groups[0]] = counts.auc()
                for g in groups[1:]:
                    counts = _HalfCounts(g)
                    for start, block in reader.blocks(probe):
                        counts.update(block, positive[start:start + len(block)])
                        done += len(block)
                        if progress is not None:
                            progress(done, N * passes)
                    auc[g] = counts.auc()
            elif groups:
                for g in groups:
                    cols = np.concatenate([b for _, b in reader.blocks(probe, units=g)]).astype(np.float64)
                    for j, u in enumerate(g):
                        auc[u] = auc_sorted(cols[:, j], positive)
                    if should_stop is not None and should_stop():
                        raise Cancelled("the query was cancelled")
            else:
                raise CorpusQueryError(f"an exact AUC over {N:,} tokens of a {ds.dtype} probe needs more than "
                                  f"{AUC_BUDGET >> 20} MB per unit; record the corpus with --dtype float16")
        return CorrelateResult(probe, feat.description, N, int(positive.sum()) if feat.binary else None, r, auc)


__all__ = ["correlate", "CorrelateResult", "Feature", "feature", "regex_values", "class_values", "label_values",
           "pearson_exact", "auc_from_counts", "auc_sorted", "TOKEN_CLASSES"]
