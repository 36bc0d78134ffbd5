"""One step of a layer's state update, ``s_t = F(s_(t-1), u_t)``, as a differentiable torch
float64 function built from a loaded model's weights (copied; the model is not touched).

What the state ``s`` and the input ``u`` are, per family:

- **LSTM**: ``s = [h, c]`` (h of the projection size with ``proj_size``), ``u`` the layer's input
  ``x_t`` (the embedding of the token, the numeric input, or the layer below's ``h``);
- **GRU**, **Elman RNN**: ``s = h``, ``u = x_t``; the cell's own nonlinearities and GRU variant;
- **diagonal families** (Mamba, HGRN, RG-LRU, minGRU / minLSTM): the state update is
  elementwise and linear in the state, ``s_t = a_t * s_(t-1) + b_t``, with ``a_t`` (the decay)
  and ``b_t`` (what the input writes) computed from the input alone; here ``u_t = [a_t, b_t]``,
  read from the run's probes (:meth:`StateStep.inputs`), so the Jacobian is ``diag(a_t)``.

:meth:`StateStep.states` and :meth:`StateStep.inputs` read the visited states and the inputs of
every step from a trace (which must hold the probes :meth:`StateStep.needed` names), so that
``F(states[t-1], inputs[t]) == states[t]`` (a test checks it for every family, against the
engine's own forward pass).  Bidirectional layers are refused (a backward direction's state
runs against time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SeqScopeError
from ..models.activations import activation
from ..probes import layer_probe

DT = torch.float64
DIAGONAL = ("mamba", "hgrn", "recurrent_gemma", "mingru", "minlstm")


class NoStateStep(SeqScopeError):
    """A model or layer whose state update SeqScope cannot write as one step."""


@dataclass(frozen=True, eq=False)
class StateStep:
    family: str
    layer: int
    state_size: int
    input_size: int
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (s [..., d], u [..., n]) -> s' [..., d]
    parts: tuple[tuple[str, int], ...]  # the state's parts in order: (probe site, width)
    _inputs: Callable = field(repr=False, default=None)
    _needed: tuple[str, ...] = ()
    diagonal: bool = False

    def __call__(self, s, u):
        """``F(s, u)`` for tensors or arrays (taken as float64)."""
        return self.fn(torch.as_tensor(s, dtype=DT), torch.as_tensor(u, dtype=DT))

    def needed(self) -> list[str]:
        """The probes :meth:`states` and :meth:`inputs` read from a trace."""
        return list(self._needed)

    def states(self, trace, sequence: int | None = None) -> np.ndarray:
        """The state after every step, [T, state_size] float64."""
        return np.concatenate([np.asarray(trace.array(layer_probe(self.layer, site), sequence), dtype=np.float64)
                               .reshape(-1, w) for site, w in self.parts], axis=1)

    def inputs(self, trace, sequence: int | None = None) -> np.ndarray:
        """The step input ``u_t`` of every step, [T, input_size] float64."""
        return self._inputs(trace, sequence)

    def previous_states(self, trace, sequence: int | None = None) -> np.ndarray:
        """The state entering every step: zeros, then the states shifted by one."""
        s = self.states(trace, sequence)
        return np.concatenate([np.zeros((1, self.state_size)), s[:-1]], axis=0)


def _w(t):
    return None if t is None else t.detach().to(DT).clone()


def state_step(model, layer: int) -> StateStep:
    """The state update of ``layer`` of ``model`` (see the module docstring)."""
    arch = model.architecture
    if not 0 <= layer < model.num_layers:
        raise NoStateStep(f"layer {layer} does not exist: the model has layers 0..{model.num_layers - 1}")
    if hasattr(model, "cells"):
        return _classic(model, layer)
    if arch in DIAGONAL:
        return _diagonal(model, layer)
    raise NoStateStep(f"the state update of {arch!r} models is not written as a single step here; "
                      f"Jacobians and fixed points cover LSTM, GRU, Elman RNN and {', '.join(DIAGONAL)}")


# -- classic cells ---------------------------------------------------------------------------------


def _classic(model, layer: int) -> StateStep:
    if model.bidirectional:
        raise NoStateStep("the layers of a bidirectional model also run backwards in time; "
                          "Jacobians and fixed points need a unidirectional model")
    cell = model.cells[layer][0]
    w_ih, w_hh, b_ih, b_hh = _w(cell.w_ih), _w(cell.w_hh), _w(cell.b_ih), _w(cell.b_hh)
    zero = torch.zeros(w_ih.shape[0], dtype=DT)
    b = (b_ih if b_ih is not None else zero) + (b_hh if b_hh is not None else zero)
    family = cell.family
    if family == "lstm":
        act, gate = activation(cell.activation_name), activation(cell.recurrent_activation_name)
        w_hr = _w(cell.w_hr)
        H, P = cell.hidden_size, cell.output_size

        def fn(s, u):
            h, c = s[..., :P], s[..., P:]
            pre = u @ w_ih.T + h @ w_hh.T + b
            i, f, g, o = pre.split(H, dim=-1)
            c2 = gate(f) * c + gate(i) * act(g)
            h2 = gate(o) * act(c2)
            if w_hr is not None:
                h2 = h2 @ w_hr.T
            return torch.cat([h2, c2], dim=-1)

        parts = (("h", P), ("c", H))
    elif family == "gru":
        act, gate = activation(cell.activation_name), activation(cell.recurrent_activation_name)
        H = cell.hidden_size
        bi = b_ih if b_ih is not None else torch.zeros(3 * H, dtype=DT)
        bh = b_hh if b_hh is not None else torch.zeros(3 * H, dtype=DT)
        reset_after = cell.reset_after

        def fn(s, u):
            xr, xz, xn = (u @ w_ih.T + bi).split(H, dim=-1)
            if reset_after:
                hr, hz, hn = (s @ w_hh.T + bh).split(H, dim=-1)
                r, z = gate(xr + hr), gate(xz + hz)
                n = act(xn + r * hn)
            else:
                hr, hz = (s @ w_hh[: 2 * H].T + bh[: 2 * H]).split(H, dim=-1)
                r, z = gate(xr + hr), gate(xz + hz)
                n = act(xn + (r * s) @ w_hh[2 * H :].T + bh[2 * H :])
            return (1 - z) * n + z * s

        parts = (("h", H),)
    else:  # Elman
        act = activation(cell.nonlinearity)

        def fn(s, u):
            return act(u @ w_ih.T + s @ w_hh.T + b)

        parts = (("h", cell.hidden_size),)
    needed = [layer_probe(layer, site) for site, _ in parts]
    if layer > 0:
        needed.append(layer_probe(layer - 1, "h"))
    embed = _w(model.embed) if layer == 0 and model.embed is not None else None

    def inputs(trace, sequence=None):
        if layer > 0:
            return np.asarray(trace.array(layer_probe(layer - 1, "h"), sequence), dtype=np.float64)
        sl = slice(None) if sequence is None else trace.sequence_slice(sequence)
        if embed is not None:
            return embed[torch.tensor(np.array(trace.tokens[sl]), dtype=torch.long)].numpy()
        if trace.inputs is None:
            raise NoStateStep("the trace holds neither tokens for the embedding nor numeric inputs")
        return np.asarray(trace.inputs[sl], dtype=np.float64)

    return StateStep(family if family != "rnn" else model.architecture, layer, sum(w for _, w in parts),
                     w_ih.shape[1], fn, parts, inputs, tuple(needed))


# -- diagonal families ---------------------------------------------------------------------------


def _diagonal(model, layer: int) -> StateStep:
    arch = model.architecture
    specs = {s.name: s for s in model.probe_specs()}

    def probe(site):
        return layer_probe(layer, site)

    if arch == "recurrent_gemma" and probe("a") not in specs:
        raise NoStateStep(f"layer {layer} of this RecurrentGemma model is a local-attention layer, not a "
                          "recurrence")
    if arch == "mamba":
        A = model.A(layer).detach().to(DT).cpu().numpy()  # [d_inner, N]
        n = A.size
        state_site, sites = "state", ("dt", "conv", "B")

        def ab(g):
            dt, u, B = g("dt"), g("conv"), g("B")
            a = np.exp(dt[:, :, None] * A[None])
            b = (dt * u)[:, :, None] * B[:, None, :]
            return a.reshape(len(a), -1), b.reshape(len(b), -1)
    elif arch == "hgrn":
        n = int(np.prod(specs[probe("state")].shape))
        state_site, sites = "state", ("f", "i")

        def ab(g):
            f = g("f")
            return f, (1 - f) * g("i")
    elif arch == "recurrent_gemma":
        n = int(np.prod(specs[probe("state")].shape))
        state_site, sites = "state", ("a", "gate_i", "conv")

        def ab(g, first=None):
            a = g("a")
            scale = np.sqrt(np.clip(1 - a * a, 0, None))
            if first is not None:
                scale[first] = 1.0  # at position 0 the state resets: a = 0 and the factor is 1
            return a, scale * g("gate_i") * g("conv")
    else:  # mingru / minlstm
        n = int(np.prod(specs[probe("h")].shape))
        state_site = "h"
        sites = ("gate_z", "h_tilde") if arch == "mingru" else ("gate_f", "gate_i", "h_tilde")

        def ab(g):
            if arch == "mingru":
                z = g("gate_z")
                return 1 - z, z * g("h_tilde")
            return g("gate_f"), g("gate_i") * g("h_tilde")

    def fn(s, u):
        return u[..., :n] * s + u[..., n:]

    def inputs(trace, sequence=None):
        def g(site):
            a = np.asarray(trace.array(probe(site), sequence), dtype=np.float64)
            return a.reshape(len(a), -1)
        if arch == "recurrent_gemma":
            offs = (np.array([0]) if sequence is not None else np.asarray(trace.offsets[:-1]))
            a, b = ab(g, first=offs[offs < trace.n_tokens] if sequence is None else offs)
        else:
            a, b = ab(g)
        return np.concatenate([a, b], axis=1)

    needed = (probe(state_site),) + tuple(probe(s) for s in sites)
    return StateStep(arch, layer, n, 2 * n, fn, ((state_site, n),), inputs, needed, diagonal=True)
