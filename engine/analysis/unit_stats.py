"""Unit statistics of a trace: what each unit does over a whole input or corpus.

Per unit of a probe (the probe's axes after the token flattened, as interventions index them):

- ``mean``, ``std`` (population, over every token);
- ``sparsity``: the fraction of tokens with ``|x| <= zero_tol`` (default 0.01);
- ``dead``: ``std <= dead_std`` (default 1e-4): the unit never changes over the input;
- for probes whose values have a known range (:func:`value_range`: sigmoid gates in (0, 1),
  tanh states and candidates in (-1, 1)), ``saturated_fraction``: the fraction of tokens within
  ``margin`` (default 2 %) of the range's width from either end, and ``saturated``: that
  fraction ``>= saturated_share`` (default 0.9): the unit sits at a bound almost always.

Per layer, gate saturation (Karpathy, Johnson & Fei-Fei 2015): for each gate probe, the fraction
of values in the lowest and in the highest tenth of the gate's range (< 0.1 and > 0.9 for a
sigmoid), over all units and tokens.

Along the position (state collapse on long inputs), for a state probe: the mean norm ``‖s_t‖``
over the sequences at each position, and the effective rank (Roy & Vetterli 2007: ``exp`` of
the entropy of the singular values normalised to sum 1) in windows of positions: for a state
with one axis per token (``h``, ``c``), of the centred states of all tokens whose position lies
in the window (how many directions the trajectory spans there); for a matrix state per token
(an SSM's ``[d_inner, d_state]``), of each token's matrix, averaged over the window.

Everything streams: a trace file (a corpus trace too) is read a block of rows at a time
(:class:`~engine.analysis.trace_source.TraceSource`), never whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..probes import parse_probe
from .trace_source import BLOCK_ROWS, TraceSource

ZERO_TOL = 0.01
DEAD_STD = 1e-4
MARGIN = 0.02
SATURATED_SHARE = 0.9
GATE_LOW, GATE_HIGH = 0.1, 0.9  # Karpathy et al.'s thresholds, as fractions of the range
MAX_RANK_UNITS = 512  # a windowed effective rank keeps a units x units scatter matrix per window
MAX_WINDOWS = 32

UNIT = (0.0, 1.0)
SIGNED = (-1.0, 1.0)
_GATE_RANGES = {  # sites bounded by construction, per architecture (see each model's probe table)
    "lstm": {"gate_i": UNIT, "gate_f": UNIT, "gate_o": UNIT, "gate_g": SIGNED},
    "gru": {"gate_r": UNIT, "gate_z": UNIT, "gate_n": SIGNED},
    "hgrn": {"f": UNIT},
    "recurrent_gemma": {"gate_r": UNIT, "gate_i": UNIT, "a": UNIT},
    "rwkv7": {"w": UNIT, "a": UNIT},
    "rwkv": {"r": UNIT},
    "mingru": {"gate_z": UNIT},
    "minlstm": {"gate_f": UNIT, "gate_i": UNIT},
    "xlstm": {"gate_o": UNIT},
    "gated_deltanet": {"decay": UNIT},
}
_BOUNDED_ACTIVATIONS = {"sigmoid": UNIT, "hard_sigmoid": UNIT, "tanh": SIGNED, "softsign": SIGNED}


def value_range(architecture: str, site: str, config: dict | None = None) -> tuple[float, float] | None:
    """The range a probe's values lie in by construction, or None when it is unbounded or the
    trace does not say enough (a cell variant with other nonlinearities, say)."""
    config = config or {}
    if architecture in ("lstm", "gru"):
        gates = config.get("recurrent_activation") or "sigmoid"
        act = config.get("activation") or "tanh"
        table = _GATE_RANGES[architecture]
        if site in table:
            fn = act if table[site] == SIGNED else gates
            return _BOUNDED_ACTIVATIONS.get(fn)
        if site == "h" and not config.get("proj_size"):
            r = _BOUNDED_ACTIVATIONS.get(act)
            return SIGNED if r is not None else None  # o * act(c) (LSTM); a mix of tanh values (GRU)
        return None
    if architecture.startswith("rnn_"):
        return _BOUNDED_ACTIVATIONS.get(architecture[4:]) if site == "h" else None
    return _GATE_RANGES.get(architecture, {}).get(site)


def gate_sites(architecture: str, config: dict | None = None) -> list[str]:
    """The sites of an architecture that are gates with a known range."""
    if architecture.startswith("rnn_"):
        return []
    return [s for s in _GATE_RANGES.get(architecture, {}) if value_range(architecture, s, config) is not None]


@dataclass(frozen=True, eq=False)
class UnitStats:
    probe: str
    count: int  # tokens
    mean: np.ndarray  # [units]
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    sparsity: np.ndarray  # fraction of tokens with |x| <= zero_tol
    dead: np.ndarray  # bool: std <= dead_std
    value_range: tuple[float, float] | None
    saturated_fraction: np.ndarray | None  # fraction of tokens within margin of a bound
    saturated: np.ndarray | None  # bool: saturated_fraction >= saturated_share
    thresholds: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return len(self.mean)

    def summary(self) -> dict:
        out = {"probe": self.probe, "tokens": self.count, "units": self.n_units,
               "dead_units": np.flatnonzero(self.dead).tolist(),
               "mean_sparsity": float(np.mean(self.sparsity)) if self.n_units else 0.0,
               "thresholds": dict(self.thresholds)}
        if self.saturated is not None:
            out["saturated_units"] = np.flatnonzero(self.saturated).tolist()
            out["range"] = list(self.value_range)
        return out


def unit_stats(source, probe: str, *, zero_tol: float = ZERO_TOL, dead_std: float = DEAD_STD,
               margin: float = MARGIN, saturated_share: float = SATURATED_SHARE,
               rows: int = BLOCK_ROWS) -> UnitStats:
    """Per-unit statistics of ``probe`` (see the module docstring) over every token of
    ``source`` (a Trace, a trace file's path, or a :class:`TraceSource`)."""
    with _source(source) as src:
        n_units = int(np.prod(src.row_shape(probe)))
        layer, site = parse_probe(probe)
        rng = value_range(src.architecture, site, src.config()) if layer is not None else None
        s1 = np.zeros(n_units)
        s2 = np.zeros(n_units)
        lo = np.full(n_units, np.inf)
        hi = np.full(n_units, -np.inf)
        near_zero = np.zeros(n_units)
        at_bound = np.zeros(n_units)
        shift = None  # the first block's mean, subtracted for a stable variance
        count = 0
        for _, block in src.blocks(probe, rows):
            x = block.reshape(len(block), -1).astype(np.float64)
            if shift is None:
                shift = x.mean(axis=0) if len(x) else np.zeros(n_units)
            d = x - shift
            s1 += d.sum(axis=0)
            s2 += (d * d).sum(axis=0)
            lo = np.minimum(lo, x.min(axis=0, initial=np.inf))
            hi = np.maximum(hi, x.max(axis=0, initial=-np.inf))
            near_zero += np.count_nonzero(np.abs(x) <= zero_tol, axis=0)
            if rng is not None:
                m = margin * (rng[1] - rng[0])
                at_bound += np.count_nonzero((x <= rng[0] + m) | (x >= rng[1] - m), axis=0)
            count += len(x)
    if count == 0:
        raise ValueError(f"{probe}: the trace has no tokens")
    mean = shift + s1 / count
    var = np.maximum(s2 / count - (s1 / count) ** 2, 0.0)
    std = np.sqrt(var)
    sat_frac = at_bound / count if rng is not None else None
    return UnitStats(
        probe=probe, count=count, mean=mean, std=std, min=lo, max=hi, sparsity=near_zero / count,
        dead=std <= dead_std, value_range=rng, saturated_fraction=sat_frac,
        saturated=None if sat_frac is None else sat_frac >= saturated_share,
        thresholds={"zero_tol": zero_tol, "dead_std": dead_std, "margin": margin,
                    "saturated_share": saturated_share})


@dataclass(frozen=True)
class GateSaturation:
    probe: str
    layer: int
    site: str
    value_range: tuple[float, float]
    low: float  # a value below this is left-saturated
    high: float  # above this, right-saturated
    left: float  # fraction of all values (units x tokens) below ``low``
    right: float
    left_per_unit: np.ndarray
    right_per_unit: np.ndarray


def gate_saturation(source, *, rows: int = BLOCK_ROWS) -> list[GateSaturation]:
    """Saturation of every gate probe the trace recorded, layer by layer."""
    out = []
    with _source(source) as src:
        arch, cfg = src.architecture, src.config()
        for name in src.probes:
            layer, site = parse_probe(name)
            rng = value_range(arch, site, cfg) if layer is not None and site in gate_sites(arch, cfg) else None
            if rng is None:
                continue
            low = rng[0] + GATE_LOW * (rng[1] - rng[0])
            high = rng[0] + GATE_HIGH * (rng[1] - rng[0])
            n_units = int(np.prod(src.row_shape(name)))
            left, right, count = np.zeros(n_units), np.zeros(n_units), 0
            for _, block in src.blocks(name, rows):
                x = block.reshape(len(block), -1)
                left += np.count_nonzero(x < low, axis=0)
                right += np.count_nonzero(x > high, axis=0)
                count += len(x)
            if count:
                out.append(GateSaturation(name, layer, site, rng, low, high, float(left.sum() / (count * n_units)),
                                          float(right.sum() / (count * n_units)), left / count, right / count))
    return sorted(out, key=lambda g: (g.layer, g.site))


@dataclass(frozen=True, eq=False)
class StateProfile:
    """A state probe along the position within a sequence."""

    probe: str
    norm: np.ndarray  # [P] mean ‖s_t‖ over the sequences that reach position t
    count: np.ndarray  # [P] how many sequences reach position t
    window: int  # positions per effective-rank window
    rank_start: np.ndarray  # [W] first position of each window
    effective_rank: np.ndarray  # [W] (NaN where a window has fewer than 2 tokens)
    rank_kind: str  # "matrix per token" or "states in the window"
    note: str = ""

    @property
    def positions(self) -> np.ndarray:
        return np.arange(len(self.norm))


def effective_rank(singular_values) -> float:
    """``exp(H(p))``, ``p = σ / Σσ`` (Roy & Vetterli 2007); 0 for an all-zero matrix."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def state_profile(source, probe: str, *, window: int | None = None, rows: int = BLOCK_ROWS) -> StateProfile:
    """Norm and effective rank of ``probe`` along the position (see the module docstring)."""
    with _source(source) as src:
        shape = src.row_shape(probe)
        lengths = np.diff(src.offsets)
        longest = int(lengths.max()) if len(lengths) else 0
        if longest == 0:
            raise ValueError(f"{probe}: the trace has no tokens")
        if window is None:
            window = max(1, math.ceil(longest / MAX_WINDOWS))
        window = max(1, int(window))
        n_win = math.ceil(longest / window)
        norm_sum = np.zeros(longest)
        count = np.bincount(np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else [],
                            minlength=longest)[:longest].astype(np.int64)
        matrix = len(shape) >= 2
        units = int(np.prod(shape))
        note = ""
        if matrix:
            rank_sum, rank_n = np.zeros(n_win), np.zeros(n_win)
        elif units <= MAX_RANK_UNITS:
            s1, s2, cnt = np.zeros((n_win, units)), np.zeros((n_win, units, units)), np.zeros(n_win)
        else:
            note = f"effective rank not computed: {units} units (at most {MAX_RANK_UNITS})"
        for a, block in src.blocks(probe, rows):
            pos = src.positions(a, a + len(block))
            x = block.astype(np.float64)
            flat = x.reshape(len(x), -1)
            np.add.at(norm_sum, pos, np.linalg.norm(flat, axis=1))
            win = pos // window
            if matrix:
                mats = x.reshape(len(x), shape[0], -1)
                ranks = np.array([effective_rank(s) for s in np.linalg.svd(mats, compute_uv=False)])
                np.add.at(rank_sum, win, ranks)
                np.add.at(rank_n, win, 1)
            elif not note:
                for w in np.unique(win):
                    xs = flat[win == w]
                    s1[w] += xs.sum(axis=0)
                    s2[w] += xs.T @ xs
                    cnt[w] += len(xs)
    if matrix:
        ranks = np.where(rank_n > 0, rank_sum / np.maximum(rank_n, 1), np.nan)
        kind = "matrix per token"
    elif note:
        ranks, kind = np.full(n_win, np.nan), "states in the window"
    else:
        ranks = np.full(n_win, np.nan)
        for w in range(n_win):
            if cnt[w] >= 2:
                mu = s1[w] / cnt[w]
                cov = s2[w] / cnt[w] - np.outer(mu, mu)
                ev = np.clip(np.linalg.eigvalsh(cov), 0, None)
                ranks[w] = effective_rank(np.sqrt(ev))
        kind = "states in the window"
    return StateProfile(probe, norm_sum / np.maximum(count, 1), count, window, np.arange(n_win) * window, ranks,
                        kind, note)


STATE_SITES = ("h", "c", "state")


def state_probes(source) -> list[str]:
    """The probes of a trace that hold a layer's recurrent state (``h``, ``c``, ``state``)."""
    with _source(source) as src:
        return [n for n in src.probes if parse_probe(n)[0] is not None and parse_probe(n)[1] in STATE_SITES]


def summarize(source, probes=None, *, rows: int = BLOCK_ROWS) -> dict:
    """Everything above as plain data (for ``seqscope stats --json``): per probe a summary of
    its unit statistics, the gate saturation per layer, and each state probe's profile."""
    with _source(source) as src:
        names = [n for n in (probes or src.probes) if n != "logits" and parse_probe(n)[1] != "attn"]
        out = {"tokens": src.n_tokens, "sequences": src.n_sequences, "architecture": src.architecture,
               "probes": [unit_stats(src, n, rows=rows).summary() for n in names]}
        out["gate_saturation"] = [{"probe": g.probe, "layer": g.layer, "left": g.left, "right": g.right,
                                   "low": g.low, "high": g.high} for g in gate_saturation(src, rows=rows)]
        profiles = []
        for n in names:
            if parse_probe(n)[1] in STATE_SITES:
                p = state_profile(src, n, rows=rows)
                profiles.append({"probe": n, "window": p.window, "rank_kind": p.rank_kind,
                                 "norm_first": float(p.norm[0]), "norm_last": float(p.norm[-1]),
                                 "effective_rank": [None if np.isnan(r) else round(float(r), 4)
                                                    for r in p.effective_rank], "note": p.note})
        out["state_profiles"] = profiles
    return out


class _source:
    """A TraceSource for a Trace or a path (opened and closed here), or the one given (left open)."""

    def __init__(self, source):
        self.own = not isinstance(source, TraceSource)
        self.src = TraceSource(source) if self.own else source

    def __enter__(self) -> TraceSource:
        return self.src

    def __exit__(self, *exc):
        if self.own:
            self.src.close()
