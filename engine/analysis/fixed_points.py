"""Fixed and slow points of a layer's state update under a constant input (Sussillo & Barak
2013, "Opening the black box").

With the input held at ``u``, the layer is the map ``s -> F(s, u)``.  Its fixed points
(``F(s*) = s*``) and slow points (``F(s) ~ s``) are the minima of the speed

    q(s) = 1/2 ||F(s, u) - s||^2

found here by minimising q from many starting states: states the run visited (so the search
looks where the dynamics actually go), each with a little Gaussian noise.  Each start is
minimised in float64 by Levenberg-Marquardt on the residual ``F(s) - s`` (all starts at once,
each with its own damping): far from a solution it moves like gradient descent on q, near one
like Newton's method on ``F(s) = s``, which converges quadratically to fixed points of every
kind, saddles included (plain descent on q crawls near a saddle).  Candidates with ``q <= q_fixed`` are fixed points, those
with ``q <= q_slow`` slow points; the rest are dropped.  Candidates closer than ``dedup`` to one
already kept are the same point (the one with the lower q stays).

Stability comes from the eigenvalues of the Jacobian at the point (a discrete-time map): with
``tol`` (default 1e-3), a direction with ``|lambda| > 1 + tol`` is unstable, one within tol of
1 marginal (a line or ring attractor's direction along itself), the rest stable.  A point is
**stable** when every direction is stable, **marginal** when none is unstable but some are
marginal, **saddle** when some but not all are unstable, **unstable** when all are.

For the diagonal families (``F(s) = a * s + b``) the answer is closed-form: one fixed point
``b / (1 - a)`` (per entry; none along an entry with ``a = 1`` and ``b != 0``), stable when every
``|a| < 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import Cancelled, SeqScopeError
from .jacobian import jacobians
from .state_step import DT, StateStep

Q_FIXED = 1e-14
Q_SLOW = 1e-6
STABILITY_TOL = 1e-3
BRIDGE_FRACTIONS = (0.25, 0.5, 0.75)
BRIDGE_PAIRS = 10


class FixedPointError(SeqScopeError):
    """A fixed-point search that cannot run as asked, with the reason."""


@dataclass(frozen=True, eq=False)
class FixedPoint:
    state: np.ndarray  # [d]
    q: float
    kind: str  # "fixed" or "slow"
    eigenvalues: np.ndarray  # [d] complex, by decreasing modulus
    stability: str  # "stable", "marginal", "saddle" or "unstable"
    n_unstable: int
    n_marginal: int
    start: int  # which starting state led here (-1: a start between two attractors)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "stability": self.stability, "q": self.q, "n_unstable": self.n_unstable,
                "n_marginal": self.n_marginal, "spectral_radius": float(np.abs(self.eigenvalues[0])),
                "top_eigenvalues": [[float(e.real), float(e.imag)] for e in self.eigenvalues[:5]],
                "start": self.start, "state": self.state.tolist()}


@dataclass(frozen=True, eq=False)
class FixedPointResult:
    points: list[FixedPoint]
    input: np.ndarray  # the constant input u
    n_starts: int
    settings: dict = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[FixedPoint]:
        return [p for p in self.points if p.kind == kind]


def classify(eigenvalues, tol: float = STABILITY_TOL) -> tuple[str, int, int]:
    """``(stability, n_unstable, n_marginal)`` from a map's eigenvalues (module docstring)."""
    m = np.abs(np.asarray(eigenvalues))
    n_unstable = int(np.count_nonzero(m > 1 + tol))
    n_marginal = int(np.count_nonzero(np.abs(m - 1) <= tol))
    if n_unstable == 0:
        return ("marginal" if n_marginal else "stable"), 0, n_marginal
    return ("unstable" if n_unstable == len(m) else "saddle"), n_unstable, n_marginal


def _speed(step: StateStep, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """q per row of ``s``."""
    r = step.fn(s, u.expand(len(s), -1)) - s
    return 0.5 * (r * r).sum(-1)


def find_fixed_points(step: StateStep, u, starts, *, noise: float = 0.01, max_iter: int = 100,
                      q_fixed: float = Q_FIXED, q_slow: float = Q_SLOW, dedup: float | None = None,
                      tol: float = STABILITY_TOL, seed: int = 0, bridge: bool = True,
                      should_stop=None, progress=None) -> FixedPointResult:
    """Fixed and slow points of ``step`` under the constant input ``u``, searched from
    ``starts`` [n, d] (visited states; see the module docstring).  ``noise``: the standard
    deviation of the Gaussian added to each start, relative to the starts' spread.  ``dedup``:
    the distance under which two points are one (default 1e-3 of the starts' spread, at least
    1e-6).  ``bridge``: when two or more attractors are found, search again from points on the
    segments between them (where saddles usually lie).  ``should_stop()`` true raises
    ``Cancelled``; ``progress(done, total)`` reports."""
    u = torch.as_tensor(np.asarray(u, dtype=np.float64)).reshape(1, -1)
    if u.shape[1] != step.input_size:
        raise FixedPointError(f"the constant input has {u.shape[1]} values; layer {step.layer} takes "
                              f"{step.input_size}")
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, step.state_size)
    if len(starts) == 0:
        raise FixedPointError("no starting states: run the model on an input first")
    spread = float(np.sqrt(np.mean(np.sum((starts - starts.mean(0)) ** 2, axis=1)))) or 1.0
    dedup = max(1e-3 * spread, 1e-6) if dedup is None else float(dedup)
    settings = {"noise": noise, "max_iter": max_iter, "q_fixed": q_fixed, "q_slow": q_slow, "dedup": dedup,
                "tol": tol, "seed": seed, "bridge": bridge}
    if step.diagonal:
        return _diagonal_fixed_point(step, u[0].numpy(), len(starts), tol, settings)
    rng = np.random.default_rng(seed)
    x = torch.tensor(starts + noise * spread * rng.standard_normal(starts.shape), dtype=DT)
    x, q = _levenberg_marquardt(step, x, u, max_iter, q_fixed, should_stop, progress)
    settings["lowest_q"] = float(np.nanmin(q)) if np.isfinite(q).any() else float("nan")
    points = _classified(step, u, x.numpy(), q, dedup, q_fixed, q_slow, tol, np.arange(len(x)))
    stable = [p.state for p in points if p.stability in ("stable", "marginal")]
    if bridge and len(stable) >= 2:
        # between two attractors lies their separatrix, and usually a saddle on it: search from
        # points on the segments joining them (start index -1 marks these starts)
        pairs = [(a, b) for i, a in enumerate(stable) for b in stable[i + 1:]][:BRIDGE_PAIRS]
        extra = np.array([a + f * (b - a) for a, b in pairs for f in BRIDGE_FRACTIONS])
        x2, q2 = _levenberg_marquardt(step, torch.tensor(extra, dtype=DT), u, max_iter, q_fixed, should_stop, None)
        xs = np.concatenate([np.array([p.state for p in points]).reshape(-1, step.state_size), x2.numpy()])
        qs = np.concatenate([[p.q for p in points], q2])
        starts_of = np.concatenate([[p.start for p in points], np.full(len(extra), -1)])
        points = _classified(step, u, xs, qs, dedup, q_fixed, q_slow, tol, starts_of)
    return FixedPointResult(points, u[0].numpy(), len(starts), settings)


def _classified(step, u, xs, q, dedup, q_fixed, q_slow, tol, starts_of) -> list[FixedPoint]:
    """The distinct fixed and slow points among ``xs``, with their stability."""
    chosen = _distinct(xs, q, dedup, np.isfinite(q) & (q <= q_slow))
    points = []
    if chosen:
        J = jacobians(step, xs[chosen], np.repeat(u.numpy(), len(chosen), axis=0))
        for i, j in zip(chosen, J):
            ev = np.linalg.eigvals(j)
            ev = ev[np.argsort(-np.abs(ev), kind="stable")]
            stability, n_u, n_m = classify(ev, tol)
            points.append(FixedPoint(xs[i].copy(), float(q[i]), "fixed" if q[i] <= q_fixed else "slow", ev,
                                     stability, n_u, n_m, int(starts_of[i])))
    return points


def _distinct(xs: np.ndarray, q: np.ndarray, dedup: float, ok: np.ndarray) -> list[int]:
    """Rows where ``ok``, by increasing q, skipping any within ``dedup`` of one already taken."""
    chosen: list[int] = []
    for i in np.flatnonzero(ok)[np.argsort(q[ok], kind="stable")]:
        if all(np.linalg.norm(xs[i] - xs[j]) > dedup for j in chosen):
            chosen.append(int(i))
    return chosen


def _levenberg_marquardt(step: StateStep, x: torch.Tensor, u: torch.Tensor, max_iter: int, q_fixed: float,
                         should_stop, progress):
    """Minimise q for every row of ``x`` at once, each with its own damping: the step solves
    ``(J^T J + mu I) dx = -J^T r`` with ``r = F(s) - s`` and ``J = dF/ds - I``; a step that lowers q is
    taken and mu shrinks (towards Gauss-Newton, which converges quadratically at a fixed point),
    one that does not is refused and mu grows (towards gradient descent).  A row stops when its q
    is at most ``q_fixed`` or its damping has grown past any use."""
    eye = torch.eye(step.state_size, dtype=DT)
    mu = torch.full((len(x),), 1e-3, dtype=DT)
    with torch.no_grad():
        q = _speed(step, x, u)
    for it in range(max_iter):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        active = torch.nonzero((q > q_fixed) & (mu < 1e12) & torch.isfinite(q)).flatten()
        if len(active) == 0:
            break
        xa, ua = x[active], u.expand(len(active), -1)
        with torch.no_grad():
            r = step.fn(xa, ua) - xa
        J = torch.as_tensor(jacobians(step, xa.numpy(), ua.numpy())) - eye
        Jt = J.transpose(1, 2)
        A = Jt @ J + mu[active, None, None] * eye
        try:
            dx = torch.linalg.solve(A, -(Jt @ r.unsqueeze(-1))).squeeze(-1)
        except RuntimeError:  # a singular system (mu underflowed): damp it and go on
            mu[active] *= 10
            continue
        with torch.no_grad():
            q_new = _speed(step, xa + dx, u)
        better = torch.isfinite(q_new) & (q_new < q[active])
        x[active[better]] = (xa + dx)[better]
        q[active[better]] = q_new[better]
        mu[active] = torch.where(better, mu[active] * 0.3, mu[active] * 10)
        if progress is not None:
            progress(it + 1, max_iter)
    return x, q.numpy()


def _diagonal_fixed_point(step: StateStep, u: np.ndarray, n_starts: int, tol: float, settings) -> FixedPointResult:
    n = step.state_size
    a, b = u[:n], u[n:]
    free = np.abs(1 - a) > 0
    if np.any(~free & (b != 0)):
        return FixedPointResult([], u, n_starts, settings)  # a = 1 with a nonzero input: no fixed point
    s = np.where(free, b / np.where(free, 1 - a, 1.0), 0.0)
    ev = a.astype(np.complex128)
    ev = ev[np.argsort(-np.abs(ev), kind="stable")]
    stability, n_u, n_m = classify(ev, tol)
    return FixedPointResult([FixedPoint(s, 0.0, "fixed", ev, stability, n_u, n_m, -1)], u, n_starts, settings)


def constant_input(step: StateStep, trace, model, how: str = "mean", sequence: int | None = None) -> np.ndarray:
    """A constant input for :func:`find_fixed_points`: ``"zero"``; ``"mean"`` (the mean step input
    over the trace, or one sequence); ``"step:T"`` (the input of step T of the sequence);
    ``"token:X"`` (the embedding of token X, layer 0 of a token model; X a character or an id)."""
    how = str(how)
    if how == "zero":
        if step.diagonal:
            raise FixedPointError("a zero input means no decay at all for this family: use 'mean' or 'step:T'")
        return np.zeros(step.input_size)
    if how.startswith("token:"):
        return _token_input(step, model, how[len("token:"):])
    inputs = step.inputs(trace, sequence)
    if how == "mean":
        return inputs.mean(axis=0)
    if how.startswith("step:"):
        try:
            t = int(how[len("step:"):])
        except ValueError:
            raise FixedPointError(f"{how!r}: write step:T with T a whole number") from None
        if not 0 <= t < len(inputs):
            raise FixedPointError(f"step {t} is outside the input (steps 0..{len(inputs) - 1})")
        return inputs[t]
    raise FixedPointError(f"unknown constant input {how!r}: use zero, mean, step:T or token:X")


def _token_input(step: StateStep, model, token: str) -> np.ndarray:
    if step.diagonal or step.layer != 0 or getattr(model, "embed", None) is None:
        raise FixedPointError("a token as the constant input needs layer 0 of an LSTM/GRU/RNN that reads "
                              "tokens; use mean, zero or step:T")
    tok = getattr(model, "tokenizer", None)
    ids = None
    if tok is not None:
        try:
            ids = [int(i) for i in tok.encode(token)[0]]
        except Exception:  # noqa: BLE001 - an encoder's own refusal: fall through to a plain id
            ids = None
    if ids is None or len(ids) != 1:
        if token.isdigit():
            ids = [int(token)]
        else:
            raise FixedPointError(f"{token!r} is not one token of this model's vocabulary")
    if not 0 <= ids[0] < model.embed.shape[0]:
        raise FixedPointError(f"token id {ids[0]} is outside the vocabulary (0..{model.embed.shape[0] - 1})")
    return model.embed[ids[0]].detach().double().cpu().numpy()
