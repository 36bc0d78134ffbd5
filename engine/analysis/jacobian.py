"""The Jacobian of a layer's state update at the states a run visited, and its eigenvalues.

``J_t = dF/ds (s_(t-1), u_t)``: how a small change of the state entering step t changes the
state after it (:mod:`engine.analysis.state_step`'s ``F``, in float64).  Its eigenvalues say how
the recurrence treats perturbations at that point of the input: the spectral radius
``max |lambda|`` above 1 stretches some direction (sensitive, possibly chaotic dynamics), far
below 1 forgets quickly; eigenvalues near 1 are directions the state keeps (memory).  For the
diagonal families the Jacobian is ``diag(a_t)`` exactly, and the eigenvalues are the decays.

Computed with ``torch.autograd.functional.jacobian`` (vectorised), a block of steps at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .state_step import DT, StateStep

BLOCK = 32  # steps whose Jacobians are formed at once
MAX_STEPS = 512  # steps examined by default on a long input (evenly spaced)


def jacobians(step: StateStep, states, inputs) -> np.ndarray:
    """``J[b] = dF/ds (states[b], inputs[b])`` for a batch: [B, d, d] float64."""
    s = torch.as_tensor(np.asarray(states), dtype=DT).reshape(-1, step.state_size)
    u = torch.as_tensor(np.asarray(inputs), dtype=DT).reshape(-1, step.input_size)
    if step.diagonal:
        return np.stack([np.diag(a) for a in u[:, : step.state_size].numpy()])
    j = torch.autograd.functional.jacobian(lambda x: step.fn(x, u).sum(0), s, vectorize=True)  # [d, B, d]
    return j.permute(1, 0, 2).numpy()


def jacobian(step: StateStep, state, inp) -> np.ndarray:
    """The Jacobian at one state and input, [d, d]."""
    return jacobians(step, np.asarray(state)[None], np.asarray(inp)[None])[0]


@dataclass(frozen=True, eq=False)
class JacobianSpectra:
    steps: np.ndarray  # [K] the steps examined (indices into the sequence)
    eigenvalues: np.ndarray  # [K, d] complex, sorted by decreasing modulus
    layer: int
    sequence: int | None

    @property
    def spectral_radius(self) -> np.ndarray:
        return np.abs(self.eigenvalues[:, 0])


def choose_steps(n: int, max_steps: int | None = MAX_STEPS) -> np.ndarray:
    """All ``n`` steps, or ``max_steps`` of them evenly spaced (first and last included)."""
    if max_steps is None or n <= max_steps:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_steps).round().astype(np.int64))


def spectra_along(step: StateStep, trace, sequence: int | None = 0, *, max_steps: int | None = MAX_STEPS,
                  should_stop=None, progress=None) -> JacobianSpectra:
    """Eigenvalues of the Jacobian at every step of a sequence of ``trace`` (or ``max_steps``
    of them, evenly spaced).  ``should_stop()`` true raises ``Cancelled``; ``progress(done,
    total)`` is called after each block."""
    from ..errors import Cancelled

    prev = step.previous_states(trace, sequence)
    inputs = step.inputs(trace, sequence)
    steps = choose_steps(len(prev), max_steps)
    out = []
    for k in range(0, len(steps), BLOCK):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        idx = steps[k : k + BLOCK]
        if step.diagonal:  # the decays themselves
            ev = inputs[idx, : step.state_size].astype(np.complex128)
        else:
            ev = np.linalg.eigvals(jacobians(step, prev[idx], inputs[idx]))
        order = np.argsort(-np.abs(ev), axis=1, kind="stable")
        out.append(np.take_along_axis(ev, order, axis=1))
        if progress is not None:
            progress(min(k + BLOCK, len(steps)), len(steps))
    ev = np.concatenate(out) if out else np.zeros((0, step.state_size), dtype=np.complex128)
    return JacobianSpectra(steps, ev, step.layer, sequence)
