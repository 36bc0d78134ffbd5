"""Linear probes: which direction of a probe point encodes a feature, and a steering vector from it.

A feature is one value per token (:func:`make_feature`): a regex span over the text (1 inside a
match), a token class, a column of a numeric input, or a labels array given by the user.  A 0/1
feature, or a few whole-number classes, gets a logistic probe (softmax for several classes);
any other numeric feature a ridge probe.  :func:`fit_probes` fits one probe per probe point
(a glob such as ``layers.*.h``: one per layer) on a training part of the trace and scores it on
the held-out rest (:func:`held_out`): accuracy for classes, R^2 for numbers.

Both fits run on standardised units (mean 0, variance 1 on the training part; the L2 penalty
``l2`` is per token on those): ridge in closed form (float64 normal equations), logistic by
L-BFGS.  The weights are mapped back to the probe's own units: ``direction`` is the unit vector
along ``w / std`` (the direction in activation space that moves the probe's output most per
unit of length).  :meth:`ProbeFit.steering` turns it into an ``add alpha * direction``
intervention from a step on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled, SeqScopeError
from ..interventions import Intervention, Span
from ..probes import match_probes
from . import neurons

MAX_WIDTH = 8192  #: units a probe point may have (the normal equations are width x width)
MAX_CLASSES = 32


class ProbeError(SeqScopeError):
    """A probe that cannot be fitted (no such feature, a constant one, no probe point), with why."""


@dataclass(frozen=True)
class Feature:
    name: str
    values: np.ndarray  # [N] float64
    kind: str  # "binary", "classes" or "numeric"


def make_feature(trace, *, regex: str | None = None, token_class: str | None = None, column: int | None = None,
                 labels=None) -> Feature:
    """Exactly one of: ``regex`` (1 for tokens overlapping a match), ``token_class`` (one of
    :data:`engine.analysis.neurons.TOKEN_CLASSES`), ``column`` (of a numeric input), ``labels``
    (an array with one number per token)."""
    given = [k for k, v in (("regex", regex), ("token class", token_class), ("column", column), ("labels", labels))
             if v is not None]
    if len(given) != 1:
        raise ProbeError("give exactly one feature: a regex, a token class, an input column or a labels array")
    if regex is not None or token_class is not None:
        if trace.token_text is None:
            raise ProbeError("this trace has no text (a numeric input): use an input column or labels")
    if regex is not None:
        try:
            v = neurons.regex_feature(trace.token_text, regex, trace.offsets)
        except re.error as exc:
            raise ProbeError(f"not a valid regular expression {regex!r}: {exc}") from None
        return _checked(Feature(f"/{regex}/", v.astype(np.float64), "binary"))
    if token_class is not None:
        if token_class not in neurons.TOKEN_CLASSES:
            raise ProbeError(f"unknown token class {token_class!r}; use one of {', '.join(neurons.TOKEN_CLASSES)}")
        v = neurons.class_feature(trace.token_text, token_class)
        return _checked(Feature(f"{token_class} tokens", v.astype(np.float64), "binary"))
    if column is not None:
        if trace.inputs is None:
            raise ProbeError("this trace's input is text: an input column needs a numeric input")
        if not 0 <= column < trace.inputs.shape[1]:
            raise ProbeError(f"input column {column}: the input has columns 0..{trace.inputs.shape[1] - 1}")
        return _checked(Feature(f"input column {column}", neurons.input_feature(trace.inputs, column), "numeric"))
    v = np.asarray(labels)
    if v.ndim != 1 or v.shape[0] != trace.n_tokens:
        raise ProbeError(f"labels must hold one number per token ({trace.n_tokens}); got shape {v.shape}")
    if v.dtype.kind not in "biuf" or not np.all(np.isfinite(v.astype(np.float64))):
        raise ProbeError("labels must be finite numbers")
    v = v.astype(np.float64)
    whole = np.all(v == np.round(v))
    n_classes = len(np.unique(v)) if whole else 0
    kind = "binary" if whole and set(np.unique(v)) <= {0.0, 1.0} else (
        "classes" if whole and n_classes <= MAX_CLASSES and v.min() >= 0 else "numeric")
    return _checked(Feature("labels", v, kind))


def _checked(f: Feature) -> Feature:
    if len(f.values) and np.all(f.values == f.values[0]):
        raise ProbeError(f"the feature {f.name} has the same value at every token: there is nothing to probe")
    return f


def held_out(offsets, n: int) -> tuple[np.ndarray, str]:
    """A boolean mask of held-out tokens and a sentence saying how they were chosen: by
    sequence when there are several (every fifth, or the last of fewer than five), else by
    position block (ten contiguous blocks; the 5th and 10th held out)."""
    offsets = np.asarray(offsets)
    S = len(offsets) - 1
    test = np.zeros(n, dtype=bool)
    if S >= 2:
        chosen = [s for s in range(S) if s % 5 == 4] if S >= 5 else [S - 1]
        for s in chosen:
            test[offsets[s]:offsets[s + 1]] = True
        return test, (f"held out by sequence: {len(chosen)} of {S} sequences "
                      f"({'every fifth' if S >= 5 else 'the last'}), {int(test.sum()):,} tokens")
    edges = np.linspace(0, n, 11).astype(int)
    for b in (4, 9):
        test[edges[b]:edges[b + 1]] = True
    return test, f"held out by position: blocks 5 and 10 of 10 contiguous blocks, {int(test.sum()):,} of {n:,} tokens"


@dataclass(frozen=True)
class ProbeFit:
    """One probe on one probe point.  ``weights`` [W] (or [C, W] for classes) and ``bias`` act
    on the probe's raw activations; ``direction`` [W] (or [C, W]) unit vectors along them."""

    probe: str
    kind: str  # "ridge" or "logistic"
    train_score: float
    test_score: float
    weights: np.ndarray
    bias: np.ndarray
    direction: np.ndarray
    n_train: int
    n_test: int

    @property
    def metric(self) -> str:
        return "R^2" if self.kind == "ridge" else "accuracy"

    def predict(self, acts) -> np.ndarray:
        """Ridge: the predicted value; logistic: the predicted class (0/1 for a binary probe)."""
        z = np.asarray(acts, dtype=np.float64).reshape(len(acts), -1) @ np.atleast_2d(self.weights).T + self.bias
        if self.kind == "ridge":
            return z[:, 0]
        return (z[:, 0] > 0).astype(np.int64) if z.shape[1] == 1 else z.argmax(axis=1)

    def steering(self, alpha: float, from_step: int = 0, cls: int | None = None) -> Intervention:
        """``add alpha * direction`` at this probe point from ``from_step`` on (for a probe of
        several classes, the direction of class ``cls``)."""
        d = self.direction
        if d.ndim == 2:
            if cls is None or not 0 <= cls < d.shape[0]:
                raise ProbeError(f"this probe has {d.shape[0]} classes: choose one (0..{d.shape[0] - 1}) to steer to")
            d = d[cls]
        return Intervention(self.probe, "add", tuple(float(alpha) * d), positions=Span(int(from_step), None))


@dataclass(frozen=True)
class ProbeResult:
    feature: Feature
    split: str
    fits: tuple[ProbeFit, ...]

    @property
    def best(self) -> ProbeFit:
        return max(self.fits, key=lambda f: f.test_score)

    def steering(self, alpha: float, from_step: int = 0, cls: int | None = None) -> Intervention:
        """The best probe's steering intervention (see :meth:`ProbeFit.steering`)."""
        return self.best.steering(alpha, from_step, cls)

    def to_dict(self) -> dict:
        return {"feature": self.feature.name, "kind": self.feature.kind, "split": self.split,
                "best": self.best.probe,
                "probes": [{"probe": f.probe, "fit": f.kind, "metric": f.metric, "train": f.train_score,
                            "test": f.test_score, "n_train": f.n_train, "n_test": f.n_test} for f in self.fits]}


def fit_probes(trace, feature: Feature, probes: str = "layers.*.h", *, l2: float = 1e-3, test=None,
               should_stop=None, progress=None) -> ProbeResult:
    """One probe per probe point matching ``probes`` in ``trace``; ``test``: a held-out mask
    (default :func:`held_out`)."""
    try:
        names = match_probes(probes, [p for p in trace.probes if p != "logits" or probes == "logits"])
    except KeyError as exc:
        raise ProbeError(str(exc.args[0])) from None
    if test is None:
        test, split = held_out(trace.offsets, trace.n_tokens)
    else:
        test, split = np.asarray(test, dtype=bool), "held out as given"
    if test.all() or not test.any():
        raise ProbeError("the held-out part must be neither empty nor everything: give a longer input")
    fits = []
    for n, name in enumerate(names):
        if should_stop is not None and should_stop():
            raise Cancelled("probe fitting cancelled")
        fits.append(fit_one(name, trace[name], feature, test, l2=l2))
        if progress is not None:
            progress(n + 1, len(names))
    return ProbeResult(feature, split, tuple(fits))


def fit_one(name: str, acts, feature: Feature, test: np.ndarray, *, l2: float = 1e-3) -> ProbeFit:
    X = np.asarray(acts).reshape(len(acts), -1)
    if X.shape[1] > MAX_WIDTH:
        raise ProbeError(f"{name} has {X.shape[1]:,} units per token; a linear probe fits at most {MAX_WIDTH:,}")
    y = feature.values
    train = ~test
    if feature.kind != "numeric" and len(np.unique(y[train])) < 2:
        raise ProbeError(f"the training part holds only one value of {feature.name}: give a longer or more varied input")
    Xt = torch.from_numpy(np.ascontiguousarray(X[train], dtype=np.float32))
    mean = Xt.double().mean(0)
    std = Xt.double().std(0).clamp_min(1e-6)
    Z = ((Xt.double() - mean) / std).float()
    if feature.kind == "numeric":
        w, b = _ridge(Z, torch.from_numpy(y[train]), l2)
        kind = "ridge"
    else:
        w, b = _logistic(Z, y[train].astype(np.int64), l2, binary=feature.kind == "binary")
        kind = "logistic"
    raw_w = (w / std[None, :]).numpy()  # [C, W] on raw activations
    raw_b = (b - (w / std[None, :]) @ mean).numpy()
    norms = np.linalg.norm(raw_w, axis=1, keepdims=True)
    direction = raw_w / np.where(norms > 0, norms, 1)
    squeeze = (lambda a: a[0]) if raw_w.shape[0] == 1 else (lambda a: a)
    fit = ProbeFit(name, kind, 0.0, 0.0, squeeze(raw_w), raw_b, squeeze(direction), int(train.sum()), int(test.sum()))
    score = lambda m: _score(fit, X[m], y[m])  # noqa: E731
    return ProbeFit(name, kind, score(train), score(test), fit.weights, fit.bias, fit.direction,
                    fit.n_train, fit.n_test)


def _score(fit: ProbeFit, X, y) -> float:
    pred = fit.predict(X)
    if fit.kind == "ridge":
        ss = float(((y - y.mean()) ** 2).sum())
        return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 0.0
    return float((pred == y).mean())


def _ridge(Z: torch.Tensor, y: torch.Tensor, l2: float):
    n, W = Z.shape
    Zd = Z.double()
    ym = y.double().mean()
    A = Zd.T @ Zd + l2 * n * torch.eye(W, dtype=torch.float64)
    w = torch.linalg.solve(A, Zd.T @ (y.double() - ym))
    return w[None, :], ym.reshape(1)


def _logistic(Z: torch.Tensor, y: np.ndarray, l2: float, binary: bool, iters: int = 200):
    n, W = Z.shape
    C = 1 if binary else int(y.max()) + 1
    w = torch.zeros(C, W, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(C, dtype=torch.float32, requires_grad=True)
    target = torch.from_numpy(y)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = Z @ w.T + b
        if binary:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], target.float())
        else:
            loss = torch.nn.functional.cross_entropy(z, target)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().double(), b.detach().double()


def unit_scores(acts, feature: Feature, test: np.ndarray) -> np.ndarray:
    """[W] the held-out score of each unit alone as a probe: a least-squares line through the
    training tokens (R^2 for a numeric feature; for classes, the accuracy of rounding the line
    to the nearest class)."""
    X = np.asarray(acts, dtype=np.float64).reshape(len(acts), -1)
    y = feature.values
    tr = ~test
    xm, ym = X[tr].mean(0), y[tr].mean()
    xc = X[tr] - xm
    var = (xc * xc).sum(0)
    slope = np.where(var > 0, (xc * (y[tr] - ym)[:, None]).sum(0) / np.where(var > 0, var, 1), 0.0)
    pred = ym + (X[test] - xm) * slope  # [n_test, W]
    yt = y[test]
    if feature.kind == "numeric":
        ss = ((yt - yt.mean()) ** 2).sum()
        return 1.0 - ((yt[:, None] - pred) ** 2).sum(0) / (ss if ss > 0 else 1.0)
    return (np.clip(np.round(pred), y.min(), y.max()) == yt[:, None]).mean(0)
