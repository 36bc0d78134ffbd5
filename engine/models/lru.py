"""LRU ("Resurrecting Recurrent Neural Networks for Long Sequences", Orvieto et al. 2023): an
instrumented language model in SeqScope's own layout (there is no standard checkpoint).

The model::

    x_0 = embed[token]
    layer k:  u_t = rmsnorm(x_t)                                          norm
              lambda = exp(-exp(nu_log) + i exp(theta_log))               [N] complex, |lambda| < 1
              s_t = lambda * s_(t-1) + exp(gamma_log) * (B u_t)           [N] complex, s_0 = 0
              y_t = Re(C s_t) + D * u_t                                   [d]
              x_t = x_t + glu(gelu(y_t))        glu(z) = (W_a z + b_a) * sigmoid(W_b z + b_b)
                                                glu(gelu(y_t)): probe "mixer"; x_t after: "out"
    logits = head(rmsnorm(x))                                             norm_f

with B = B_re + i B_im [N, d], C = C_re + i C_im [d, N] (the paper's block: LRU, GELU, GLU,
residual; the norm is an RMSNorm with ``norm_eps``).

SeqScope's layout for this family: a ``.safetensors`` file with ``embed.weight`` [V, d]; per
layer ``layers.{k}.norm.weight`` [d], ``layers.{k}.lru.nu_log``, ``.theta_log``, ``.gamma_log``
[N], ``layers.{k}.lru.B_re``, ``.B_im`` [N, d], ``layers.{k}.lru.C_re``, ``.C_im`` [d, N],
``layers.{k}.lru.D`` [d], ``layers.{k}.glu.weight`` [2d, d] (rows W_a then W_b),
``layers.{k}.glu.bias`` [2d]; ``norm_f.weight`` [d], ``head.weight`` [V, d]; metadata
``seqscope_config`` = ``{"family": "lru", "d_model", "d_state", "n_layer", "vocab_size",
"norm_eps"}`` (or the same dict in a ``config.json`` beside it).  :func:`save_lru` writes it
from any dict of tensors with these names, so a user exports an LRU trained elsewhere.

Probe sites per layer: ``in`` (u), ``Bu`` (the complex input ``exp(gamma_log) * B u_t`` that
enters the state), ``state`` (s_t, complex), ``y``, ``mixer`` (glu(gelu(y)), before the residual add), ``out``
(after it), ``attn``.
Complex sites have shape [N, 2]: real and imaginary part of each state channel (interventions
index them flattened: unit = 2 * channel + part, part 0 real, 1 imaginary; see
:meth:`LRUModel.state_units`).  ``attn`` is the implicit attention for the window of
:attr:`attention_window`: the contribution of step j to the output at step i,
``c_ij = Re(C (lambda^(i-j) * Bu_j))`` [d] (so ``y_i = sum_(j<=i) c_ij + D u_i`` exactly), shown as
``mean_h |c_ij,h|`` over the d output units.

Runs chunk by chunk (``engine.models.chunked``): every per-token quantity of a chunk at once,
then the recurrence by :mod:`.diagonal`'s parallel prefix scan (its factors powers of lambda,
each computed directly), cut where the state is edited.  The prefix cache keeps ``s``.

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{k}.state`` [d_state, 2], s as the ``state`` probe shows it (real, imaginary part).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .diagonal import DiagonalRecurrenceModel, Powers, edits_in_chunk, scan_split_at_edits
from .layer_state import StatePart
from .family import FamilyConfig, build_model, check_loaded_weights, config_from_fields, probe_table, unused_note

SITES = ("in", "Bu", "state", "y", "mixer", "out", "attn")
COMPLEX_SITES = ("Bu", "state")
#: rows of the attention window computed at once
TILE = 32


@dataclass(frozen=True)
class LRUConfig(FamilyConfig):
    FAMILY = "lru"

    d_model: int
    d_state: int
    n_layer: int
    vocab_size: int
    norm_eps: float = 1e-5

    def __post_init__(self):
        self.require_positive("d_model", "d_state", "n_layer", "vocab_size")


def canonical_weight_shapes(cfg: LRUConfig) -> dict[str, tuple[int, ...]]:
    d, N = cfg.d_model, cfg.d_state
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (cfg.vocab_size, d)}
    for k in range(cfg.n_layer):
        p = f"layers.{k}."
        shapes[p + "norm.weight"] = (d,)
        for name in ("nu_log", "theta_log", "gamma_log"):
            shapes[p + f"lru.{name}"] = (N,)
        shapes[p + "lru.B_re"] = shapes[p + "lru.B_im"] = (N, d)
        shapes[p + "lru.C_re"] = shapes[p + "lru.C_im"] = (d, N)
        shapes[p + "lru.D"] = (d,)
        shapes[p + "glu.weight"] = (2 * d, d)
        shapes[p + "glu.bias"] = (2 * d,)
    shapes["norm_f.weight"] = (d,)
    shapes["head.weight"] = (cfg.vocab_size, d)
    return shapes


def log_lambda(nu_log: torch.Tensor, theta_log: torch.Tensor) -> torch.Tensor:
    """``log lambda = -exp(nu_log) + i exp(theta_log)``, [N] complex."""
    return torch.complex(-torch.exp(nu_log), torch.exp(theta_log))


def to_units(z: torch.Tensor) -> torch.Tensor:
    """A complex [..., N] as the probe's flat real units [..., 2N] (re, im of each channel)."""
    return torch.view_as_real(z).flatten(-2)


def from_units(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())


def lru_attention(bu: torch.Tensor, powers: Powers, C: torch.Tensor, rows, cols, reduce="mean_abs"):
    """Implicit attention of one sequence: ``c_ij = Re(C (lambda^(i-j) * bu_j))`` for ``j <= i``
    (0 above the diagonal and past the sequence).  ``bu`` [T, N] complex, ``powers`` those of
    lambda (:class:`~engine.models.diagonal.Powers`), ``C`` [d, N] complex.  Returns [rows,
    cols] (``mean_h |c_ij,h|``) or [rows, cols, d] (``reduce=None``), a tile of rows at a time."""
    T = bu.shape[0]
    (r0, r1), (c0, c1) = rows, cols
    d = C.shape[0]
    out = bu.real.new_zeros((r1 - r0, c1 - c0) if reduce else (r1 - r0, c1 - c0, d))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0:
        return out
    table = powers.complex(max(r1c - c0, 1))  # lambda^m for every lag m = i - j >= 0 in the window
    j = torch.arange(c0, c1c, device=bu.device)
    for i0 in range(r0, r1c, TILE):
        i = torch.arange(i0, min(i0 + TILE, r1c), device=bu.device)
        m = i[:, None] - j[None, :]
        z = (table[m.clamp(min=0)] * bu[c0:c1c]).masked_fill((m < 0)[..., None], 0)
        c = F.linear(z.real, C.real) - F.linear(z.imag, C.imag)  # [rows, cols, d]
        out[i0 - r0:i0 - r0 + len(i), :c1c - c0] = c.abs().mean(-1) if reduce else c
    return out


class LRUModel(DiagonalRecurrenceModel):
    """An instrumented LRU language model (SeqScope layout)."""

    architecture = "lru"
    SITES = SITES
    ATTENTION_NEEDS = frozenset({"Bu"})
    weight_shapes = staticmethod(canonical_weight_shapes)

    def _prepare(self):
        w = self._w
        self._log_lam = [log_lambda(w[f"layers.{k}.lru.nu_log"], w[f"layers.{k}.lru.theta_log"])
                         for k in range(self.config.n_layer)]
        self._powers = [Powers(ll) for ll in self._log_lam]

    def C(self, layer: int) -> torch.Tensor:
        """The complex output matrix of a layer, [d_model, d_state]."""
        w = self._w
        return torch.complex(w[f"layers.{layer}.lru.C_re"], w[f"layers.{layer}.lru.C_im"])

    def lam(self, layer: int) -> torch.Tensor:
        """The complex eigenvalues lambda of a layer, [d_state]."""
        return torch.exp(self._log_lam[layer])

    def state_units(self, channels, parts=(0, 1)) -> list[int]:
        """Units of ``Bu``/``state`` for ``channels`` (part 0 real, 1 imaginary): for interventions."""
        channels = [channels] if isinstance(channels, int) else list(channels)
        return [2 * int(c) + p for c in channels for p in parts]

    # -- probes -------------------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        d, N = cfg.d_model, cfg.d_state
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        parts = " [re, im] per channel (interventions: unit = 2*channel + part)"
        desc = {
            "in": ((d,), "the LRU's input u = rmsnorm(x)"),
            "Bu": ((N, 2), "input to the state exp(gamma_log) * (B u_t), complex," + parts),
            "state": ((N, 2), "state s_t = lambda s_(t-1) + exp(gamma_log) B u_t, complex," + parts),
            "y": ((d,), "LRU output y_t = Re(C s_t) + D u_t"),
            "mixer": ((d,), "mixer output glu(gelu(y_t)), before the residual add (out = x + mixer)"),
            "out": ((d,), "residual stream after the block: x + mixer (x + glu(gelu(y)))"),
            "attn": ((c1 - c0,), f"implicit attention mean_h |c_ij| over output units, c_ij = Re(C lambda^(i-j) Bu_j) "
                                 f"(y_i = sum_j c_ij + D u_i); rows {r0}..{r1 - 1}, column m is key step {c0}+m; "
                                 "0 where j > i, NaN in rows outside the window"),
        }
        dims = {"Bu": ("token", "unit", "part"), "state": ("token", "unit", "part")}
        return probe_table(cfg.n_layer, SITES, desc, embed=(d, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores head(rmsnorm(x)) (before softmax)"), dims=dims)

    # -- forward --------------------------------------------------------------------------------
    def initial_state(self, batch: int):
        cdtype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        return (torch.zeros(batch, self.config.d_state, dtype=cdtype, device=self.device),)

    def state_parts(self, layer: int):
        return (StatePart(0, "state", (self.config.d_state, 2), complex=True),)

    def _norm(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.config.norm_eps)

    def _embed_tokens(self, x):
        return F.embedding(x, self._w["embed.weight"])

    def _logits(self, h):
        return F.linear(self._norm(h, self._w["norm_f.weight"]), self._w["head.weight"])

    def _site_shapes(self):
        d, N = self.config.d_model, self.config.d_state
        return {"in": (d,), "Bu": (N, 2), "state": (N, 2), "y": (d,), "mixer": (d,), "out": (d,)}

    def _layer_chunk(self, k, x, a, state, edits, record):
        w, d = self._w, self.config.d_model
        p = f"layers.{k}."
        edit = edits_in_chunk(edits, a, x.shape[0])
        u = edit("in", self._norm(x, w[p + "norm.weight"]))
        gamma = torch.exp(w[p + "lru.gamma_log"])
        bu = torch.complex(F.linear(u, w[p + "lru.B_re"]) * gamma, F.linear(u, w[p + "lru.B_im"]) * gamma)
        if edits.get("Bu"):
            bu = from_units(edit("Bu", to_units(bu)))
        hs = scan_split_at_edits(None, bu, state[0], a, edits.get("state", ()), powers=self._powers[k],
                                 flat=to_units, unflat=from_units)
        y = edit("y", F.linear(hs.real, w[p + "lru.C_re"]) - F.linear(hs.imag, w[p + "lru.C_im"]) + w[p + "lru.D"] * u)
        g = F.linear(F.gelu(y), w[p + "glu.weight"], w[p + "glu.bias"])
        mixer = edit("mixer", g[..., :d] * torch.sigmoid(g[..., d:]))
        out = edit("out", x + mixer)
        vals = {"in": u, "Bu": torch.view_as_real(bu), "state": torch.view_as_real(hs), "y": y, "mixer": mixer,
                "out": out}
        return vals, (hs[-1].clone(),)

    def _attention(self, k, out, old, s, T, B):
        bu = torch.view_as_complex(out[layer_probe(k, "Bu")].contiguous())
        C = self.C(k)
        return self._attention_rows(k, out, old, s, T, B,
                                    lambda b, rows, cols: lru_attention(bu[:, b], self._powers[k], C, rows, cols))


# ======================================================================================
# saving and loading SeqScope's LRU layout
# ======================================================================================


def save_lru(path, config: LRUConfig, weights: dict, tokenizer=None):
    """Write an LRU (``weights``: tensors under the canonical names above, e.g. the state dict
    of your own module renamed) as a SeqScope ``.safetensors`` file that :func:`engine.load`
    opens.  Shapes are checked against ``config`` first.  Returns the path."""
    from ..loading import save_model

    model = LRUModel(config, weights, dtype=next(iter(weights.values())).dtype, tokenizer=tokenizer)
    return save_model(model, path)


_NU = re.compile(r"^(.*?)layers\.(\d+)\.lru\.nu_log$")


def looks_like(tensors: dict, configs: list) -> bool:
    return any(d.get("family") == "lru" for _, d in configs) or any(_NU.match(k) for k in tensors)


def load(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> LRUModel:
    """An :class:`LRUModel` from SeqScope's layout (any common prefix); LoadErrors name the keys."""
    prefixes = {m.group(1) for k in tensors if (m := _NU.match(k))}
    if len(prefixes) > 1:
        raise LoadError(f"{name}: LRU layers under several prefixes ({', '.join(sorted(prefixes))})")
    prefix = prefixes.pop() if prefixes else ""
    canon = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}
    origin = {(k[len(prefix):] if k.startswith(prefix) else k): k for k in tensors}
    n = 0
    while f"layers.{n}.lru.nu_log" in canon:
        n += 1
    emb, nu = canon.get("embed.weight"), canon.get("layers.0.lru.nu_log")
    fields = {"n_layer": n}
    if emb is not None and emb.ndim == 2:
        fields.update(vocab_size=int(emb.shape[0]), d_model=int(emb.shape[1]))
    if nu is not None and nu.ndim == 1:
        fields["d_state"] = int(nu.shape[0])
    for src, d in configs:  # a stated config wins
        if d.get("family") == "lru":
            fields.update({k: v for k, v in d.items() if k in LRUConfig.__dataclass_fields__})
            break
    cfg = config_from_fields(LRUConfig, fields, name=name, label="LRU", tensors=tensors)
    what = f"an LRU model (SeqScope layout: d_model={cfg.d_model}, d_state={cfg.d_state}, n_layer={cfg.n_layer})"
    expected = canonical_weight_shapes(cfg)
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    model = build_model(LRUModel, cfg, {cn: canon[cn] for cn in expected}, name=name, label="LRU", **kwargs)
    model.load_info.update({"format": fmt, "layout": "SeqScope LRU"})
    if unused:
        model.load_info["notes"] = unused_note(unused)
    return model
