"""Fixed and slow points of a layer's state update under a constant input (Sussillo & Barak
2013, "Opening the black box").

With the input held at ``u``, the layer is the map ``s -> F(s, u)``.  Its fixed points
(``F(s*) = s*``) and slow points (``F(s) ~ s``) are the minima of the speed

    q(s) = 1/2 ||F(s, u) - s||^2

found here by minimising q from many starting states: states the run visited (so the search
looks where the dynamics actually go), each with a little Gaussian noise.  All starts are
minimised together in float64 with L-BFGS (their q's do not interact); then each candidate is
polished by Newton's method on ``F(s) - s = 0`` (quadratic convergence at a true fixed point; a
step is kept only when it lowers q).  Candidates with ``q <= q_fixed`` are fixed points, those
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
    start: int  # which starting state led here

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


def find_fixed_points(step: StateStep, u, starts, *, noise: float = 0.01, max_iter: int = 300,
                      q_fixed: float = Q_FIXED, q_slow: float = Q_SLOW, dedup: float | None = None,
                      tol: float = STABILITY_TOL, newton_steps: int = 20, seed: int = 0,
                      should_stop=None, progress=None) -> FixedPointResult:
    """Fixed and slow points of ``step`` under the constant input ``u``, searched from
    ``starts`` [n, d] (visited states; see the module docstring).  ``noise``: the standard
    deviation of the Gaussian added to each start, relative to the starts' spread.  ``dedup``:
    the distance under which two points are one (default 1e-3 of the starts' spread, at least
    1e-6).  ``should_stop()`` true raises ``Cancelled``; ``progress(done, total)`` reports."""
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
                "tol": tol, "seed": seed}
    if step.diagonal:
        return _diagonal_fixed_point(step, u[0].numpy(), len(starts), tol, settings)
    rng = np.random.default_rng(seed)
    s0 = starts + noise * spread * rng.standard_normal(starts.shape)
    s = torch.tensor(s0, dtype=DT, requires_grad=True)
    opt = torch.optim.LBFGS([s], lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-15, tolerance_change=1e-20)

    def closure():
        opt.zero_grad()
        loss = _speed(step, s, u).sum()
        loss.backward()
        return loss

    rounds = max(1, max_iter // 20)
    for r in range(rounds):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        opt.step(closure)
        if progress is not None:
            progress(r + 1, rounds + 1)
        with torch.no_grad():
            if float(_speed(step, s, u).max()) <= q_fixed:
                break
    x = s.detach().clone()
    x = _newton(step, x, u, newton_steps, should_stop)
    with torch.no_grad():
        q = _speed(step, x, u).numpy()
    keep = np.flatnonzero(np.isfinite(q) & (q <= q_slow))
    order = keep[np.argsort(q[keep], kind="stable")]
    chosen: list[int] = []
    xs = x.numpy()
    for i in order:
        if all(np.linalg.norm(xs[i] - xs[j]) > dedup for j in chosen):
            chosen.append(int(i))
    points = []
    if chosen:
        J = jacobians(step, xs[chosen], np.repeat(u.numpy(), len(chosen), axis=0))
        for i, j in zip(chosen, J):
            ev = np.linalg.eigvals(j)
            ev = ev[np.argsort(-np.abs(ev), kind="stable")]
            stability, n_u, n_m = classify(ev, tol)
            points.append(FixedPoint(xs[i].copy(), float(q[i]), "fixed" if q[i] <= q_fixed else "slow", ev,
                                     stability, n_u, n_m, i))
    if progress is not None:
        progress(rounds + 1, rounds + 1)
    return FixedPointResult(points, u[0].numpy(), len(starts), settings)


def _newton(step: StateStep, x: torch.Tensor, u: torch.Tensor, n_steps: int, should_stop) -> torch.Tensor:
    """Newton steps on ``F(s) - s = 0`` for every row, each kept only where it lowers q."""
    eye = torch.eye(step.state_size, dtype=DT)
    for _ in range(n_steps):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        with torch.no_grad():
            q_old = _speed(step, x, u)
            r = step.fn(x, u.expand(len(x), -1)) - x
        J = torch.as_tensor(jacobians(step, x.numpy(), np.repeat(u.numpy(), len(x), axis=0)))
        try:
            dx = torch.linalg.lstsq(J - eye, -r.unsqueeze(-1)).solution.squeeze(-1)
        except RuntimeError:
            break
        with torch.no_grad():
            x_new = x + dx
            q_new = _speed(step, x_new, u)
            better = torch.isfinite(q_new) & (q_new < q_old)
            if not bool(better.any()):
                break
            x = torch.where(better[:, None], x_new, x)
    return x


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
