"""The engine's own forward pass with gradients, for attribution.

``engine.run`` runs under ``torch.no_grad`` with the fastest kernels (compiled numba loops on a
CPU).  :class:`DifferentiableForward` runs the *same* ``model.forward`` with autograd on, from
outside the model:

- the input vectors are a tensor of our own: for a token model, the output of the model's
  embedding (``embed``, the vectors fed to layer 0) is replaced by a leaf we pass in (the
  classic stack on a shallow copy without its embedding table, which then reads vectors as a
  numeric model does; the chunked families on a shallow copy whose ``_embed_tokens`` returns
  the leaf); a numeric model reads its inputs as they are;
- a family with a compiled scan runs its torch loop (``scan="torch"`` on the copy);
- perturbations of a state: an ``add`` of a per-step tensor ``delta`` [T, B, width] at a probe
  point at every step, bound through the model's own intervention machinery (``model.bind``),
  so the gradient with respect to ``delta[t]`` is the total derivative of the output with
  respect to that probe at step t, through every later step.

Every family of the engine runs this way (the classic LSTM/GRU/Elman stack and every chunked
family: Mamba, Mamba2, RWKV-4/7, minGRU/minLSTM, RecurrentGemma, xLSTM, GLA/RetNet, DeltaNet,
HGRN, LRU); a bidirectional stack takes input gradients but no state perturbation (its
backward direction sees the future).  The copies share the model's weights and never change
the model.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..errors import SeqScopeError
from ..interventions import BoundIntervention, Intervention


class AttributionError(SeqScopeError):
    """An attribution that cannot be computed for this model or target, with the reason."""


class _LeafAdd(BoundIntervention):
    """A bound ``patch`` whose per-step values [T, B, width] are *added* (a perturbation ``delta``
    whose gradient we want), not written."""

    def _edit(self, x, value):
        return x + (value if value.dtype == x.dtype else value.to(x.dtype))


def _is_stack(model) -> bool:
    from ..models.stack import RecurrentStack

    return isinstance(model, RecurrentStack)


def _is_chunked(model) -> bool:
    from ..models.chunked import ChunkedLayerModel

    return isinstance(model, ChunkedLayerModel)


def check_supported(model, states: bool = False) -> None:
    """Refuse, in words, a model whose forward pass cannot run with gradients here."""
    if not (_is_stack(model) or _is_chunked(model)):
        raise AttributionError(
            f"attribution needs the engine's differentiable forward pass, which {type(model).__name__} models "
            f"do not have; it works for LSTM, GRU and Elman stacks and for the chunked families (Mamba, Mamba2, "
            f"RWKV-4/7, minGRU/minLSTM, RecurrentGemma, xLSTM, GLA/RetNet, DeltaNet, HGRN, LRU)")
    if states and getattr(model, "bidirectional", False):
        raise AttributionError("this model is bidirectional: its backward direction reads later tokens, so a "
                               "state perturbation at step t is not causal; attribute to the input tokens instead")


class DifferentiableForward:
    """``model.forward`` with autograd on, reading input vectors we give."""

    def __init__(self, model):
        check_supported(model)
        self.model = model
        self._copy = copy.copy(model)  # shares the weights; only the attributes set below differ
        if _is_stack(model):
            self._copy.embed = None  # layer 0 reads the vectors we pass, as in a numeric model
        if hasattr(type(model), "scan") and getattr(model, "scan", "torch") != "torch":
            self._copy.scan = "torch"  # a compiled loop has no gradient

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    def _width(self, probe: str) -> int:
        return next(int(np.prod(sp.shape)) for sp in self.model.probe_specs() if sp.name == probe)

    def input_vectors(self, data: np.ndarray) -> torch.Tensor:
        """[T, F] the vectors layer 0 reads: the embedding of token ids (as the ``embed`` probe
        records them) or the numeric inputs themselves."""
        m = self.model
        if m.takes_tokens:
            ids = torch.as_tensor(np.asarray(data, dtype=np.int64), device=self.device)
            with torch.no_grad():
                if _is_stack(m):
                    return torch.nn.functional.embedding(ids, m.embed).clone()
                return m._embed_tokens(ids[:, None])[:, 0].clone()
        return torch.as_tensor(np.asarray(data), dtype=self.dtype, device=self.device).clone()

    def __call__(self, vectors: torch.Tensor, want: set[str], adds: dict[str, torch.Tensor] | None = None,
                 chunk: int = 256) -> dict[str, torch.Tensor]:
        """Run on ``vectors`` [T, B, F] (may require grad) and return ``{probe: [T, B, ...]}`` for
        ``want``.  ``adds``: ``{probe: delta [T, B, width]}`` added at that probe at every step."""
        T, B = vectors.shape[0], vectors.shape[1]
        lengths = [T] * B
        adds = dict(adds or {})
        if _is_stack(self.model):  # internals besides h come from a recovery with out= products:
            for p in want:  # a zero edit at every step makes the layer step through its equations
                if p not in adds and p != "logits" and not p.endswith(".h"):
                    adds[p] = vectors.new_zeros(T, B, self._width(p))
        if adds:
            check_supported(self.model, states=True)
        ivs = [Intervention(p, "patch", np.zeros((T, d.shape[-1]), dtype=np.float32)) for p, d in adds.items()]
        plan = self._copy.bind(ivs, lengths, {n: iv.value for n, iv in enumerate(ivs)})
        for iv, delta in zip(ivs, adds.values()):
            for bound in _bounds_of(plan, iv):
                bound.__class__ = _LeafAdd
                bound.value = delta
        m = self._copy
        if _is_stack(m):
            x = vectors
        else:  # the chunked forward reads only the shape of the ids; the vectors come from _embed_tokens
            x = torch.zeros(T, B, dtype=torch.long, device=self.device)
            m._embed_tokens = lambda _ids, v=vectors: v
        with torch.enable_grad():
            return m.forward(x, lengths, set(want), plan, chunk=chunk)


def _bounds_of(plan, iv: Intervention) -> list:
    found = [b for bs in plan.whole.values() for b in bs if b.iv is iv]
    found += [b for sites in plan.layer.values() for bs in sites.values() for b in bs if b.iv is iv]
    return found


def state_probes(model) -> list[str]:
    """The probe of each layer holding its recurrent state, as attribution to earlier states
    perturbs it: ``h`` of the classic stack, ``state`` where a family records one, else the
    layer's output."""
    specs = {s.name: s for s in model.probe_specs()}
    out = []
    for k in range(model.num_layers):
        for site in ("h", "state"):
            if f"layers.{k}.{site}" in specs:
                out.append(f"layers.{k}.{site}")
                break
        else:
            out.append(model.layer_output_probe(k))
    return out
