"""Decay spectra: the timescales a recurrence's own decays set, per layer, in steps.

Every family SeqScope runs keeps (part of) its state by multiplying it, per unit or channel,
with a decay ``a_t`` in (0, 1] at each step.  Its timescale is the e-folding time of the product
of those decays (:func:`~engine.analysis.timescales.effective_timescale`):

    tau = -1 / <log a_t>          (<.>: the mean over the trace's tokens)

which is ``-1 / log a`` for a constant decay, and for a decay that varies with the input the
e-folding time of what the state keeps on that input (the geometric mean of the decays).
Where the decay comes from, per family (``recorded`` means read from the run's probe, so the
decay the input actually set):

=================  ==================================================  ========================
family             log a_t per entry                                   entries
=================  ==================================================  ========================
LSTM               log gate_f (recorded)                               cell units
GRU                log gate_z (recorded); torch's ``h' = (1-z) n + z h``  units
minGRU / minLSTM   log(1 - gate_z) / log gate_f (f', recorded)         units
Mamba              dt_t,c * A_c,n (dt recorded, A = -exp(A_log))       channel x state
Mamba2             dt_t,h * A_h (dt recorded)                          heads
LRU                log abs(lambda) = -exp(nu_log) (weights)            state channels
RWKV-4             w = -exp(time_decay) (weights)                      channels
RWKV-7             log w_t (recorded)                                  key channels
RG-LRU             log a_t (recorded; position 0, where it resets, left out)  channels
HGRN               log f_t (recorded)                                  channels
xLSTM (mLSTM)      gate_f = log f_t (recorded)                         heads
GLA                gate = log a_t (recorded)                           key channels
RetNet             log(1 - 2^(-5-h)) (fixed)                           heads
gated DeltaNet     log decay_t (recorded)                              heads
=================  ==================================================  ========================

Elman RNNs have no decay (their timescales are the autocorrelation times, or the Jacobian's
eigenvalues, :mod:`engine.analysis.jacobian`); DeltaNet without a gate has none either.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SeqScopeError
from ..probes import layer_probe
from .timescales import effective_timescale


class NoDecay(SeqScopeError):
    """The model's recurrence has no decay to read a timescale from."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    layer: int
    tau: np.ndarray  # [entries] steps; inf where the decay is 1
    source: str  # where the decay comes from, e.g. "gate_f (recorded)"
    entries: str  # what one entry is: "unit", "channel x state", "head" ...

    def summary(self) -> dict:
        finite = self.tau[np.isfinite(self.tau)]
        q = np.percentile(finite, [10, 50, 90]).tolist() if finite.size else [None] * 3
        return {"layer": self.layer, "source": self.source, "entries": self.entries, "count": int(self.tau.size),
                "never_decay": int(np.count_nonzero(np.isposinf(self.tau))),
                "tau_p10": q[0], "tau_median": q[1], "tau_p90": q[2],
                "tau_max": float(finite.max()) if finite.size else None}


# family -> (recorded site or None, how the entries are named)
_RECORDED = {
    "lstm": ("gate_f", "unit"), "gru": ("gate_z", "unit"), "mingru": ("gate_z", "unit"),
    "minlstm": ("gate_f", "unit"), "mamba": ("dt", "channel x state"), "mamba2": ("dt", "head"),
    "rwkv7": ("w", "key channel"), "recurrent_gemma": ("a", "channel"), "hgrn": ("f", "channel"),
    "xlstm": ("gate_f", "head"), "gla": ("gate", "key channel"), "gated_deltanet": ("decay", "head"),
}
_FROM_WEIGHTS = {"lru": "state channel", "rwkv": "channel", "retnet": "head"}


def needed_probes(model) -> list[str]:
    """The probes :func:`decay_spectrum` reads from a trace of ``model`` (none for the families
    whose decays are weights alone)."""
    arch = model.architecture
    if arch in _FROM_WEIGHTS:
        return []
    if arch not in _RECORDED:
        raise NoDecay(_no_decay(arch))
    site = _RECORDED[arch][0]
    names = {s.name for s in model.probe_specs()}
    return [layer_probe(k, site) for k in range(model.num_layers) if layer_probe(k, site) in names]


def _no_decay(arch: str) -> str:
    if arch.startswith("rnn_"):
        return ("an Elman RNN has no decay gate: use its autocorrelation timescales (seqscope timescales "
                "--autocorrelation) or the Jacobian's eigenvalues (seqscope jacobian)")
    if arch == "deltanet":
        return "DeltaNet without a gate has no decay (its state changes only by the delta rule)"
    return f"no decay spectrum is defined for {arch!r} models"


def _mean_over_tokens(a: np.ndarray, offsets=None, skip_first: bool = False) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if skip_first and offsets is not None:
        keep = np.ones(len(a), dtype=bool)
        keep[np.asarray(offsets[:-1])[np.diff(offsets) > 0]] = False
        a = a[keep]
    if len(a) == 0:
        raise ValueError("the trace has no tokens to average the decays over")
    return a.reshape(len(a), -1).mean(axis=0)


def _log(a):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(a, dtype=np.float64))


def decay_spectrum(model, trace=None, sequence: int | None = None) -> list[Spectrum]:
    """The decay spectrum of every layer of ``model`` that has one, from its weights and, where
    the decay depends on the input, the probes of ``trace`` (:func:`needed_probes`), over all of
    the trace's tokens or one ``sequence``."""
    arch = model.architecture
    out = []
    if arch in _FROM_WEIGHTS:
        for k in range(model.num_layers):
            out.append(Spectrum(k, _weight_tau(model, arch, k), _weight_source(arch), _FROM_WEIGHTS[arch]))
        return out
    names = needed_probes(model)
    if trace is None:
        raise ValueError(f"a {arch} model's decays depend on its input: pass a trace with {', '.join(names)}")
    missing = [n for n in names if n not in trace.arrays]
    if missing:
        raise KeyError(f"the trace did not record {', '.join(missing)}, which the decay spectrum needs")
    offsets = trace.offsets
    if sequence is not None:
        sl = trace.sequence_slice(sequence)
        offsets = np.array([0, sl.stop - sl.start])
    site, entries = _RECORDED[arch]
    for name in names:
        k = int(name.split(".")[1])
        v = trace.array(name, sequence)
        if arch == "mamba":
            A = model.A(k).detach().double().cpu().numpy()  # [d_inner, N], negative
            mean_log = _mean_over_tokens(v)[:, None] * A
            source = "exp(dt A): dt recorded, A = -exp(A_log)"
        elif arch == "mamba2":
            A = model.A(k).detach().double().cpu().numpy()  # [H]
            mean_log = _mean_over_tokens(v) * A
            source = "exp(dt A): dt recorded, A = -exp(A_log) per head"
        elif arch in ("xlstm", "gla"):
            mean_log = _mean_over_tokens(v)  # already log decays
            source = f"{site} = log decay (recorded)"
        elif arch == "mingru":
            mean_log = _mean_over_tokens(_log(1.0 - np.asarray(v, dtype=np.float64)))
            source = "1 - gate_z (recorded); h' = (1 - z) h + z h~"
        else:
            skip = arch == "recurrent_gemma"
            mean_log = _mean_over_tokens(_log(v), offsets, skip_first=skip)
            source = f"{site} (recorded)" + ("; torch's h' = (1 - z) n + z h keeps z of h" if arch == "gru" else "")
            if skip:
                source += "; position 0, where the state resets, left out"
        out.append(Spectrum(k, effective_timescale(mean_log).ravel(), source, entries))
    return out


def _weight_tau(model, arch: str, k: int) -> np.ndarray:
    if arch == "lru":
        log_abs = np.log(np.abs(model.lam(k).detach().cpu().numpy().astype(np.complex128)))
    elif arch == "rwkv":
        log_abs = model.decay(k).detach().double().cpu().numpy()  # w = -exp(time_decay) is the log decay
    else:  # retnet
        log_abs = model.log_decay(k).detach().double().cpu().numpy()
    return effective_timescale(log_abs)


def _weight_source(arch: str) -> str:
    return {"lru": "|lambda| = exp(-exp(nu_log)) (weights)", "rwkv": "w = -exp(time_decay) (weights)",
            "retnet": "gamma_h = 1 - 2^(-5-h) (fixed)"}[arch]
