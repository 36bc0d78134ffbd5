"""Attribution: which earlier tokens and states made an output.

The output (:class:`Target`) is one number of a run: a logit of the head at a step
(``logit:STEP:TOKEN``) or one unit of a probe at a step (``unit:PROBE:UNIT:STEP``).  Its
attribution to each earlier position, through the engine's own differentiable forward pass
(:mod:`engine.analysis.differentiable`):

- :func:`gradient_x_input`: ``grad f(x) . x`` per token (x: the vectors layer 0 reads, the
  embedding of a token or a numeric input row), and per layer ``grad . h`` with respect to the
  recurrent state at each step (:func:`~engine.analysis.differentiable.state_probes`);
- :func:`integrated_gradients`: ``x . integral_0^1 grad f(a x) da`` with the zero vector as the
  baseline (Sundararajan et al. 2017), the integral by the midpoint rule (or Gauss-Legendre)
  with ``steps`` nodes.  Completeness: the scores sum to ``f(x) - f(0)`` as the steps grow; the
  result reports both and the gap.  A model whose first operation is a norm (RWKV's LayerNorm
  after the embedding) is scale-invariant, f(a x) = f(x), except within about sqrt(eps)/|x| of
  the zero baseline, where all of f(x) - f(0) happens: evenly spaced nodes miss that sliver (on
  a small RWKV the gap grew from 44 % at 8 steps to 630 % at 512).  ``rule="auto"`` (the
  default) sees this from f(x/4) ~ f(x/2) ~ f(x) and then spaces the nodes geometrically from 1e-7 to 1
  (the ``geometric`` rule: 64 steps brought that gap to 0.8 %).

Causal attribution, where gradients mislead (a saturated gate has no gradient and still
matters), is :func:`engine.analysis.patching.patching_attribution`;
:func:`engine.analysis.patching.attribute` runs any of the three methods.

Only positions up to the target's step can matter: the input is cut there before running.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import Cancelled
from ..run import prepare_inputs
from .differentiable import AttributionError, DifferentiableForward, state_probes

@dataclass(frozen=True)
class Target:
    """One output number: ``kind`` "logit" (``index`` the token id, ``probe`` "logits") or
    "unit" (``probe``, ``index`` the flattened unit), at ``step``."""

    kind: str
    probe: str
    index: int
    step: int

    def describe(self) -> str:
        if self.kind == "logit":
            return f"logit of token {self.index} at step {self.step}"
        return f"{self.probe} unit {self.index} at step {self.step}"


def parse_target(text: str, model=None) -> Target:
    """``logit:STEP:TOKEN`` (TOKEN an id, or a token's text the vocabulary knows) or
    ``unit:PROBE:UNIT:STEP``; checked against ``model`` when given."""
    parts = text.split(":") if isinstance(text, str) else []
    try:
        if parts and parts[0] == "logit" and len(parts) >= 3:
            token = ":".join(parts[2:])
            t = Target("logit", "logits", _token_index(token, model), int(parts[1]))
        elif parts and parts[0] == "unit" and len(parts) == 4:
            t = Target("unit", parts[1], int(parts[2]), int(parts[3]))
        else:
            raise ValueError
    except ValueError:
        raise AttributionError(f"target {text!r}: write logit:STEP:TOKEN (e.g. logit:40:7) or "
                               f"unit:PROBE:UNIT:STEP (e.g. unit:layers.0.h:121:40)") from None
    if model is not None:
        check_target(model, t)
    return t


def _token_index(token: str, model) -> int:
    if token.lstrip("-").isdigit():
        return int(token)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError
    ids, _ = tok.encode(token)
    if len(ids) != 1:
        raise AttributionError(f"{token!r} is {len(ids)} tokens in this vocabulary; give one token or its id")
    return int(ids[0])


def check_target(model, target: Target, n_tokens: int | None = None) -> None:
    """Refuse, in words, a target this model or input does not have."""
    specs = {s.name: s for s in model.probe_specs()}
    if target.probe not in specs:
        what = "has no head (no probe 'logits')" if target.kind == "logit" else f"has no probe {target.probe!r}"
        raise AttributionError(f"this {model.architecture} model {what}; its probes: {', '.join(specs)}")
    width = int(np.prod(specs[target.probe].shape))
    if not 0 <= target.index < width:
        what = "token ids" if target.kind == "logit" else f"units of {target.probe}"
        raise AttributionError(f"{target.describe()}: the {what} are 0..{width - 1}")
    if target.step < 0 or (n_tokens is not None and target.step >= n_tokens):
        raise AttributionError(f"{target.describe()}: the input has steps 0..{(n_tokens or 1) - 1}")
    if specs[target.probe].site == "attn":
        raise AttributionError(f"{target.probe} is computed after the run; choose a unit of another probe")


@dataclass(frozen=True)
class Attribution:
    """Scores for the positions ``0..target.step`` of one sequence.

    ``scores`` [T]: the attribution to each input token (patching: to each step's state);
    ``per_feature`` [T, F]: the same per input feature (None for patching); ``states``:
    ``{probe: [T]}`` gradient x state per layer (None for IG and patching); ``output`` f(x);
    ``baseline`` f(0) for IG (None otherwise); ``tokens``: the token texts (or step numbers)."""

    method: str
    target: Target
    scores: np.ndarray
    output: float
    tokens: tuple[str, ...]
    per_feature: np.ndarray | None = None
    states: dict = field(default_factory=dict)
    baseline: float | None = None
    steps: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def completeness_gap(self) -> float | None:
        """|sum(scores) - (f(x) - f(0))| / |f(x) - f(0)| for IG, else None."""
        if self.baseline is None:
            return None
        diff = self.output - self.baseline
        return abs(float(self.scores.sum()) - diff) / max(abs(diff), 1e-12)

    def to_dict(self) -> dict:
        d = {"method": self.method, "target": self.target.describe(), "output": self.output,
             "tokens": list(self.tokens), "scores": [float(v) for v in self.scores]}
        if self.baseline is not None:
            d.update(baseline=self.baseline, steps=self.steps, completeness_gap=self.completeness_gap)
        if self.states:
            d["states"] = {k: [float(v) for v in a] for k, a in self.states.items()}
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def one_sequence(model, inputs, target: Target):
    seqs = prepare_inputs(model, inputs)
    if len(seqs) != 1:
        raise AttributionError(f"attribution reads one sequence; got {len(seqs)}")
    seq = seqs[0]
    check_target(model, target, len(seq))
    T = target.step + 1
    data = seq.data()[:T]
    tokens = tuple(seq.text[:T]) if seq.text is not None else tuple(str(t) for t in range(T))
    return data, tokens


def _pick(out: dict, target: Target) -> torch.Tensor:
    """The target's value in each batch row: [B]."""
    a = out[target.probe]
    return a[target.step].reshape(a.shape[1], -1)[:, target.index]


def gradient_x_input(model, inputs, target: Target, *, states: bool = True, should_stop=None,
                     progress=None) -> Attribution:
    """Gradient x input for each token, and gradient x state for each layer's state probe (one
    forward and backward pass: ``should_stop`` and ``progress`` are accepted for symmetry)."""
    fwd = DifferentiableForward(model)
    data, tokens = one_sequence(model, inputs, target)
    x = fwd.input_vectors(data)[:, None].requires_grad_(True)  # [T, 1, F]
    probes = state_probes(model) if states and not getattr(model, "bidirectional", False) else []
    adds = {}
    if probes:  # the clean state values, for gradient x state
        with torch.no_grad():
            clean = fwd(x.detach(), set(probes))
        widths = {p: clean[p].reshape(len(data), 1, -1) for p in probes}
        adds = {p: torch.zeros_like(v, requires_grad=True) for p, v in widths.items()}
    out = fwd(x, {target.probe}, adds)
    value = _pick(out, target)[0]
    grads = torch.autograd.grad(value, [x] + list(adds.values()), allow_unused=True)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
    per_feature = (gx * x.detach())[:, 0].double().cpu().numpy()
    state_scores = {}
    for p, g in zip(adds, grads[1:]):
        g = torch.zeros_like(adds[p]) if g is None else g
        state_scores[p] = (g * widths[p]).sum(dim=(1, 2)).double().cpu().numpy()
    return Attribution("grad", target, per_feature.sum(axis=1), float(value.detach()), tokens, per_feature=per_feature,
                       states=state_scores)


RULES = ("auto", "midpoint", "gauss-legendre", "geometric")
#: the geometric rule's nodes lie between this and 1 (what f does below it is left in the gap)
GEOMETRIC_FROM = 1e-7


def quadrature(steps: int, rule: str = "midpoint") -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1]: the midpoint rule, or Gauss-Legendre (exact for polynomials
    of degree 2*steps-1, better on smooth paths; on the bundled char-LSTM the midpoint rule was
    the steadier of the two at 32 steps)."""
    if rule == "midpoint":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if rule == "geometric":  # the midpoint rule in log a, for an integrand crowded near a = 0
        edges = np.exp(np.linspace(np.log(GEOMETRIC_FROM), 0.0, steps + 1))
        return np.sqrt(edges[:-1] * edges[1:]), np.diff(edges)
    raise AttributionError(f"unknown quadrature rule {rule!r}; use one of {', '.join(RULES)}")


def integrated_gradients(model, inputs, target: Target, *, steps: int = 32, batch: int = 32,
                         rule: str = "auto", should_stop=None, progress=None) -> Attribution:
    """Integrated gradients from the zero input vector with ``steps`` quadrature nodes (see
    :func:`quadrature`; ``auto``: geometric where f(x/4) = f(x), the midpoint rule elsewhere),
    ``batch`` nodes at a time as one batched forward and backward pass. ``completeness_gap`` of
    the result says how far the scores' sum is from f(x) - f(0): more steps bring it down."""
    if not 1 <= int(steps) <= 4096:
        raise AttributionError(f"integrated gradients takes 1..4096 steps, not {steps}")
    fwd = DifferentiableForward(model)
    data, tokens = one_sequence(model, inputs, target)
    x = fwd.input_vectors(data)  # [T, F]
    with torch.no_grad():  # f(0), f(x/4), f(x/2) and f(x) in one batch
        ends = torch.stack([torch.zeros_like(x), x / 4, x / 2, x], dim=1)
        f0, f4, f2, f1 = (float(v) for v in _pick(fwd(ends, {target.probe}), target))
    notes = ()
    if rule == "auto":
        # the change crowds near 0 when f is flat over [x/4, x]: f(x/4) and f(x/2) within a
        # quarter of f(x) - f(0) of f(x) (a straight path makes three quarters of it there)
        change = abs(f1 - f0)
        crowded = change > 1e-9 and max(abs(f1 - f4), abs(f1 - f2)) <= 0.25 * change
        rule = "geometric" if crowded else "midpoint"
        if crowded:
            notes = ("f changes most near the zero baseline (a norm first?): the nodes are spaced "
                     "geometrically from 1e-7 to 1, to follow it",)
    alphas, weights = quadrature(int(steps), rule)
    total = torch.zeros_like(x, dtype=torch.float64)
    for a in range(0, len(alphas), batch):
        if should_stop is not None and should_stop():
            raise Cancelled("attribution cancelled")
        al = torch.as_tensor(alphas[a:a + batch], dtype=x.dtype, device=x.device)
        path = (al[None, :, None] * x[:, None, :]).detach().requires_grad_(True)  # [T, b, F]
        out = _pick(fwd(path, {target.probe}), target)
        (g,) = torch.autograd.grad(out.sum(), path)
        w = torch.as_tensor(weights[a:a + batch], dtype=torch.float64, device=x.device)
        total += (g.double() * w[None, :, None]).sum(dim=1)
        if progress is not None:
            progress(min(a + batch, len(alphas)), len(alphas))
    per_feature = (total * x.double()).cpu().numpy()
    return Attribution("ig", target, per_feature.sum(axis=1), f1, tokens, per_feature=per_feature,
                       baseline=f0, steps=int(steps), notes=notes)
