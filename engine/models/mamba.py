"""Mamba (1): an instrumented selective state-space language model.

The model (Gu & Dao 2023; the layout of ``transformers``' ``MambaForCausalLM``)::

    x_0 = embed[token]
    layer i:  n = norm(x)                         RMSNorm (LayerNorm in some mamba_ssm models)
              in, z = split(in_proj(n))           two halves of d_inner
              u  = silu(causal_conv(in))          depthwise, kernel d_conv, over time
              dt_low, B, C = split(x_proj(u))     ranks dt_rank, d_state, d_state
              dt = softplus(dt_proj(dt_low))      [d_inner]
              s_t = exp(dt A) s_(t-1) + dt B u    [d_inner, d_state] per token, A = -exp(A_log)
              y = (C . s_t + D u) * silu(z)
              x = x + out_proj(y)                 out_proj(y): probe "mixer"; x after: "out"
    logits = lm_head(norm_f(x))

Canonical weight names are those of ``MambaForCausalLM`` (``backbone.layers.{i}.mixer.*``);
the loaders convert the ``mamba_ssm`` layout to them.

How a layer runs
----------------
Everything in a layer except the state ``s`` is computed per token from the layer's input,
which is known in full once the layers below have run.  So the layer is taken chunk by chunk
(chunks aligned to multiples of ``chunk``, as ``engine.run`` requires): in one chunk every
per-token quantity comes from batched matmuls over the chunk's rows (interventions on ``in``,
``conv``, ``dt``, ``B``, ``C``, ``y``, ``mixer``, ``out`` are applied to the whole chunk at once, each
before the quantities computed from it), and only the scan loops over time.  The scan takes
``exp(dt A)`` for ``SUB`` steps at a time in one vectorised call into a buffer that stays in
cache, then either a compiled ``numba`` loop (the CPU fast path, about twice the torch loop;
nothing [T, d_inner, d_state] is kept unless the ``state`` probe is asked for) or a plain torch
loop (the reference path; on GPUs and in half precision).  An intervention on ``state`` at step t
splits the scan there: steps up to t run, the state is edited, ``y_t`` is recomputed from it.
A step's value never depends on anything at or after it, and the chunk grid is the same for
every run, so a re-run from a state kept at a chunk boundary (the SSM state and the conv
buffer: the last ``d_conv - 1`` values of ``in``) equals a full re-run bit for bit.

Initial and final states (``engine.run(..., initial_state=...)``): ``layers.{k}.state`` [d_inner,
d_state] and ``layers.{k}.conv_window`` [d_conv - 1, d_inner], the last ``in`` values, oldest first.

Implicit attention (probe ``attn``) is computed for a window of rows and columns only
(:attr:`MambaModel.attention_window`), from the layer's ``dt``, ``B``, ``C`` and ``A``
(see :mod:`engine.analysis.implicit_attention`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .family import (FamilyConfig, ScannedFamilyModel, StatedConfig, build_model, check_loaded_weights,  # noqa: F401
                     config_from_fields, numba_available, probe_table, run_parallel_numba, unused_note,
                     untied_if_the_file_says_so)  # numba_available: imported from here by tests and benchmarks
from .layer_state import StatePart

SITES = ("in", "conv", "dt", "B", "C", "state", "gate", "y", "mixer", "out", "attn")
#: steps of exp(dt A) computed at once (a [SUB, batch, d_inner, d_state] buffer)
SUB = 64


@dataclass(frozen=True)
class MambaConfig(FamilyConfig):
    FAMILY = "mamba"

    d_model: int
    n_layer: int
    vocab_size: int
    d_inner: int
    d_state: int = 16
    d_conv: int = 4
    dt_rank: int = 0  # 0: ceil(d_model / 16), as both libraries default
    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm with bias, mamba_ssm rms_norm=false)
    norm_eps: float = 1e-5
    in_proj_bias: bool = False
    out_proj_bias: bool = False
    conv_bias: bool = True
    tie_embeddings: bool = True  # lm_head shares the embedding matrix

    def __post_init__(self):
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if not self.dt_rank:
            object.__setattr__(self, "dt_rank", -(-self.d_model // 16))
        self.require_positive("d_model", "n_layer", "vocab_size", "d_inner", "d_state", "d_conv", "dt_rank")


def canonical_weight_shapes(cfg: MambaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (``MambaForCausalLM`` names), with its shape."""
    d, di, N, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
    shapes: dict[str, tuple[int, ...]] = {"backbone.embeddings.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        shapes[p + "norm.weight"] = (d,)
        if cfg.norm == "layer":
            shapes[p + "norm.bias"] = (d,)
        m = p + "mixer."
        shapes[m + "in_proj.weight"] = (2 * di, d)
        if cfg.in_proj_bias:
            shapes[m + "in_proj.bias"] = (2 * di,)
        shapes[m + "conv1d.weight"] = (di, 1, cfg.d_conv)
        if cfg.conv_bias:
            shapes[m + "conv1d.bias"] = (di,)
        shapes[m + "x_proj.weight"] = (R + 2 * N, di)
        shapes[m + "dt_proj.weight"] = (di, R)
        shapes[m + "dt_proj.bias"] = (di,)
        shapes[m + "A_log"] = (di, N)
        shapes[m + "D"] = (di,)
        shapes[m + "out_proj.weight"] = (d, di)
        if cfg.out_proj_bias:
            shapes[m + "out_proj.bias"] = (d,)
    shapes["backbone.norm_f.weight"] = (d,)
    if cfg.norm == "layer":
        shapes["backbone.norm_f.bias"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


@dataclass(frozen=True)
class AttentionWindow:
    """Which rows (query steps) and columns (key steps) of the implicit attention the ``attn``
    probe holds, as half-open ``(start, stop)`` positions within each sequence."""

    rows: tuple[int, int] = (0, 256)
    cols: tuple[int, int] = (0, 256)

    def __post_init__(self):
        for name in ("rows", "cols"):
            a, b = (int(v) for v in getattr(self, name))
            if a < 0 or b <= a:
                raise ValueError(f"attention window {name} must be (start, stop) with 0 <= start < stop, got {(a, b)}")
            object.__setattr__(self, name, (a, b))

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


#: why interventions on ``attn`` are refused
NOT_EDITABLE_ATTN = "it is computed from dt, B and C after the run and feeds nothing; " \
    "intervene on dt, B, C or state instead"


class _Layer:
    """One layer's weights, in the model's dtype and device."""

    def __init__(self, w: dict, p: str, cfg: MambaConfig):
        m = p + "mixer."
        self.norm_w = w[p + "norm.weight"]
        self.norm_b = w.get(p + "norm.bias")
        self.in_w, self.in_b = w[m + "in_proj.weight"], w.get(m + "in_proj.bias")
        self.conv_w = w[m + "conv1d.weight"][:, 0, :]  # [d_inner, K]
        self.conv_b = w.get(m + "conv1d.bias")
        self.x_w = w[m + "x_proj.weight"]
        self.dt_w, self.dt_b = w[m + "dt_proj.weight"], w[m + "dt_proj.bias"]
        self.A_log = w[m + "A_log"]
        self.D = w[m + "D"]
        self.out_w, self.out_b = w[m + "out_proj.weight"], w.get(m + "out_proj.bias")
        self.A = -torch.exp(self.A_log)


class MambaModel(ScannedFamilyModel):
    """An instrumented Mamba language model.  Build with :func:`engine.load` or from a config
    and canonical weights.

    ``scan``: ``"numba"`` (compiled CPU loop), ``"torch"`` (plain loop over steps: the
    reference, and the GPU path) or ``"auto"`` (numba on a CPU, unless it cannot be imported).  ``attention_window``: see :class:`AttentionWindow`.
    """

    architecture = "mamba"
    SITES = SITES
    ATTENTION_NEEDS = frozenset({"dt", "B", "C"})
    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}

    weight_shapes = staticmethod(canonical_weight_shapes)

    def _prepare(self):
        w = self._w
        self.embed = w["backbone.embeddings.weight"]
        self.head = w.get("lm_head.weight", self.embed)
        self.norm_f_w, self.norm_f_b = w["backbone.norm_f.weight"], w.get("backbone.norm_f.bias")
        self.layers = [_Layer(w, f"backbone.layers.{i}.", self.config) for i in range(self.config.n_layer)]

    def A(self, layer: int) -> torch.Tensor:
        """The continuous state matrix ``A = -exp(A_log)`` of a layer, [d_inner, d_state]."""
        return self.layers[layer].A

    def out_proj_weight(self, layer: int) -> torch.Tensor:
        """``out_proj``'s weight of a layer, [d_model, d_inner]."""
        return self.layers[layer].out_w

    def state_units(self, channels, states=None) -> list[int]:
        """Unit indices of the ``state`` probe (flattened ``channel * d_state + state``) for
        ``channels`` and, optionally, only some ``states`` of each: for interventions."""
        N = self.config.d_state
        channels = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
        states = range(N) if states is None else ([states] if isinstance(states, (int, np.integer)) else states)
        return [int(c) * N + int(n) for c in channels for n in states]

    # -- probes -----------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        di, N, d = cfg.d_inner, cfg.d_state, cfg.d_model
        win = self._window
        (r0, r1), (c0, c1) = win.rows, win.cols
        desc = {
            "in": (di, "x half of in_proj(norm(input)), before the causal convolution"),
            "conv": (di, "u = silu(causal depthwise conv1d(in) + bias): the scan's input"),
            "dt": (di, "step size dt = softplus(dt_proj(dt_low) + dt_bias), per channel"),
            "B": (N, "input matrix B_t (from x_proj(u)), shared by all channels; enters the state as dt*B*u"),
            "C": (N, "output matrix C_t (from x_proj(u)), shared by all channels; y = C.s + D u"),
            "state": ((di, N), "SSM state s_t = exp(dt A) s_(t-1) + dt B u after step t, d_inner x d_state "
                               "(interventions index it flattened: unit = channel*d_state + state)"),
            "gate": (di, "output gate silu(z), z the second half of in_proj(norm(input))"),
            "y": (di, "scan output with skip and gate: (C.s_t + D u_t) * silu(z_t), before out_proj"),
            "mixer": (d, "mixer output out_proj(y), before the residual add (out = input + mixer): where "
                         "nnsight-style steering and patching edit the block"),
            "out": (d, "residual stream after the block: input + mixer (input + out_proj(y))"),
            "attn": (c1 - c0, f"implicit attention mean_c |alpha_ij| over channels, alpha_ij = "
                              f"C_i.(prod_(k=j+1..i) exp(dt_k A)).dt_j B_j; rows {r0}..{r1 - 1}, column m is key "
                              f"step {c0}+m; 0 where j > i, NaN in rows outside the window"),
        }
        dims = {"B": ("token", "state"), "C": ("token", "state"), "state": ("token", "unit", "state")}
        return probe_table(cfg.n_layer, SITES, desc, embed=(d, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores lm_head(norm_f(x)) (before softmax)"), dims=dims)

    # -- interventions ------------------------------------------------------------------
    # -- the forward pass -----------------------------------------------------------------
    def initial_state(self, batch: int):
        cfg = self.config
        ssm = torch.zeros(batch, cfg.d_inner, cfg.d_state, dtype=self.dtype, device=self.device)
        conv = torch.zeros(cfg.d_conv - 1, batch, cfg.d_inner, dtype=self.dtype, device=self.device)
        return ssm, conv

    def state_parts(self, layer: int):
        cfg = self.config
        window = (StatePart(1, "conv_window", (cfg.d_conv - 1, cfg.d_inner), batch_axis=1),)
        return (StatePart(0, "state", (cfg.d_inner, cfg.d_state)),) + (window if cfg.d_conv > 1 else ())

    def _norm(self, h, w, b):
        if self.config.norm == "layer":
            return F.layer_norm(h, (h.shape[-1],), w, b, self.config.norm_eps)
        var = h.pow(2).mean(-1, keepdim=True)
        return w * (h * torch.rsqrt(var + self.config.norm_eps))

    def _logits(self, h):
        return F.linear(self._norm(h, self.norm_f_w, self.norm_f_b), self.head)

    def _embed_tokens(self, x):
        return F.embedding(x, self.embed)

    def _site_shapes(self):
        cfg = self.config
        return {"in": (cfg.d_inner,), "conv": (cfg.d_inner,), "dt": (cfg.d_inner,), "B": (cfg.d_state,),
                "C": (cfg.d_state,), "state": (cfg.d_inner, cfg.d_state), "gate": (cfg.d_inner,),
                "y": (cfg.d_inner,), "mixer": (cfg.d_model,), "out": (cfg.d_model,)}

    def _layer_chunk_into(self, k, h, a, state, edits, record, dest):
        """A chunk of layer ``k``; the scan writes the ``state`` probe straight into the
        layer's array (32 KiB a token at d_inner 512, 1 GiB for 4 layers at T = 8192: a
        buffer per chunk and a copy of it cost more than the rest of the capture)."""
        vals, ssm, buf = self._chunk(self.layers[k], h, a, *state, edits, dest.get("state"))
        for site, rows in dest.items():
            if site != "state":
                rows.copy_(vals[site])
        return ssm, buf

    def _chunk(self, lay: _Layer, h, a, ssm, buf, edits, states):
        """Steps ``a..a+n-1`` of one layer: every per-token quantity at once, then the scan
        (which fills ``states`` [n, B, d_inner, d_state], when given, with the state after
        each step)."""
        cfg = self.config
        n, B = h.shape[0], h.shape[1]
        di, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank

        def edit(site, v):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                    v = e.apply_all(v, a)
            return v

        xz = F.linear(self._norm(h, lay.norm_w, lay.norm_b), lay.in_w, lay.in_b)
        xi, z = xz[..., :di], xz[..., di:]
        xi = edit("in", xi.contiguous())
        xc = torch.cat([buf, xi]) if cfg.d_conv > 1 else xi  # [K-1+n, B, di]
        K = cfg.d_conv
        conv = xc[0:n] * lay.conv_w[:, 0]
        for j in range(1, K):
            conv = conv + xc[j:j + n] * lay.conv_w[:, j]
        if lay.conv_b is not None:
            conv = conv + lay.conv_b
        u = edit("conv", F.silu(conv))
        new_buf = xc[n:].clone() if K > 1 else buf
        dbc = F.linear(u, lay.x_w)
        dt = F.softplus(F.linear(dbc[..., :R], lay.dt_w, lay.dt_b))
        dt = edit("dt", dt)
        Bm = edit("B", dbc[..., R:R + N].contiguous())
        Cm = edit("C", dbc[..., R + N:].contiguous())
        dt, u, Bm, Cm = dt.contiguous(), u.contiguous(), Bm.contiguous(), Cm.contiguous()
        ys = torch.empty(n, B, di, dtype=h.dtype, device=h.device)
        state_edits = edits.get("state", ())
        steps = sorted({int(t) - a for e in state_edits for t in e.steps if a <= t < a + n})
        ssm = ssm.clone().contiguous()
        scan = _scan_numba if self.scan == "numba" else _scan_torch
        # exp(dt A) for SUB steps at a time into one buffer that stays in cache; the sub-chunk
        # grid is fixed relative to the chunk, so every run computes each step's values alike
        dA_buf = torch.empty(min(SUB, n), B, di, N, dtype=h.dtype, device=h.device)
        for p in range(0, n, SUB):
            q = min(p + SUB, n)
            if torch.is_grad_enabled():  # a gradient (engine.analysis.differentiable): no out= product
                dA = torch.exp(dt[p:q, :, :, None] * lay.A)
            else:
                dA = dA_buf[:q - p]
                torch.mul(dt[p:q, :, :, None], lay.A, out=dA)
                dA.exp_()
            o = p
            for t in [t for t in steps if p <= t < q] + [q]:
                stop = min(t + 1, q)
                if stop > o:
                    ssm = scan(dA[o - p:stop - p], dt[o:stop], Bm[o:stop], Cm[o:stop], u[o:stop], ssm, ys[o:stop],
                               None if states is None else states[o:stop])
                if t == q:
                    break
                flat = ssm.reshape(B, di * N)  # an edit of the state after step t
                for e in state_edits:
                    flat = e.apply_step(flat, a + t)
                ssm = flat.reshape(B, di, N).contiguous()
                ys[t] = torch.matmul(ssm, Cm[t][:, :, None])[..., 0]
                if states is not None:
                    states[t] = ssm
                o = t + 1
        gate = edit("gate", F.silu(z))
        y = edit("y", (ys + u * lay.D) * gate)
        mixer = edit("mixer", F.linear(y, lay.out_w, lay.out_b))
        out = edit("out", h + mixer)
        vals = {"in": xi, "conv": u, "dt": dt, "B": Bm, "C": Cm, "gate": gate, "y": y, "mixer": mixer, "out": out}
        if states is not None:
            vals["state"] = states
        return vals, ssm, new_buf

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe of layer ``k``: rows before ``s`` from the previous run (same
        window: the prefix cache checks :meth:`cache_key`), the rest computed."""
        from ..analysis.implicit_attention import TILE, selective_scan_attention

        (r0, r1), cols = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, self._window.width), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[name][:s]
        hi = min(r1, T)
        if max(r0, s) < hi:
            # whole row tiles (aligned to r0) from the one holding step s: a row is computed the
            # same way in a full run and in a re-run
            dt, Bm, Cm = (out[layer_probe(k, site)] for site in ("dt", "B", "C"))
            for b in range(B):
                att = selective_scan_attention(dt[:, b], Bm[:, b], Cm[:, b], self.layers[k].A, (r0, hi), cols,
                                               from_row=s)
                first = r0 + max(0, (s - r0) // TILE) * TILE
                res[first:hi, b] = att[first - r0:]
        return res

    # -- what the prefix cache needs to know ------------------------------------------------

# ======================================================================================
# the scan over one stretch of steps: state [B, d_inner, d_state] in, updated state out
# ======================================================================================


def _scan_torch(dA, dt, Bm, Cm, u, ssm, ys, states):
    """The reference: one step at a time, ``s = dA_t s + (dt_t u_t) B_t``, ``y_t = s . C_t``."""
    dBu = (dt * u)[..., None] * Bm[:, :, None, :]
    for t in range(dA.shape[0]):
        ssm = dA[t] * ssm + dBu[t]
        ys[t] = torch.matmul(ssm, Cm[t][:, :, None])[..., 0]
        if states is not None:
            states[t] = ssm
    return ssm


def _numba_kernel():
    """The compiled scan (:func:`engine.models.numba_kernels.mamba_scan`)."""
    from .numba_kernels import mamba_scan

    return mamba_scan


def _scan_numba(dA, dt, Bm, Cm, u, ssm, ys, states):
    """The same steps in a compiled loop: each channel's state stays in cache, one pass."""
    import numba

    kernel = _numba_kernel()
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    arr = [v.contiguous().numpy() for v in (dA, dt, Bm, Cm, u)]
    # ys and states are slices along the leading axis of contiguous tensors: written in place
    st = states.numpy() if states is not None else np.empty((1, 1, 1, 1), dtype=arr[1].dtype)
    run_parallel_numba(kernel, threads, *arr, ssm.numpy(), ys.numpy(), st, states is not None)
    return ssm


def from_transformers(hf_model, **kwargs) -> MambaModel:
    """Wrap an in-memory ``transformers`` ``MambaForCausalLM`` (weights are copied)."""
    c = hf_model.config
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"only silu convolution activations are supported, got {c.hidden_act!r}")
    sd = hf_model.state_dict()
    cfg = MambaConfig(d_model=c.hidden_size, n_layer=c.num_hidden_layers, vocab_size=c.vocab_size,
                      d_inner=c.intermediate_size, d_state=c.state_size, d_conv=c.conv_kernel,
                      dt_rank=int(c.time_step_rank), norm_eps=c.layer_norm_epsilon, in_proj_bias=c.use_bias,
                      out_proj_bias=c.use_bias, conv_bias=c.use_conv_bias,
                      tie_embeddings="lm_head.weight" not in sd
                      or sd["lm_head.weight"].data_ptr() == sd["backbone.embeddings.weight"].data_ptr())
    kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
    return MambaModel(cfg, dict(sd), source=f"<in-memory {type(hf_model).__name__}>", **kwargs)


# ======================================================================================
# loading: Hugging Face MambaForCausalLM folders and the original mamba_ssm layout
# ======================================================================================

_A_LOG = re.compile(r"^(.*?)layers\.(\d+)\.mixer\.A_log$")
_MAMBA1_KEYS = "mixer.x_proj and mixer.dt_proj, A_log per channel and state"
_OTHER_SSM = {"mamba2": "Mamba2", "falcon_mamba": "FalconMamba", "jamba": "Jamba", "zamba": "Zamba",
              "zamba2": "Zamba2", "bamba": "Bamba", "nemotron_h": "Nemotron-H"}


def looks_like_mamba(tensors: dict, configs: list) -> bool:
    """A Mamba checkpoint: ``…layers.{i}.mixer.A_log`` tensors, or a config that says so
    (``model_type`` "mamba" or a relative, or the mamba_ssm keys ``d_model`` + ``n_layer``)."""
    if any(_A_LOG.match(k) for k in tensors):
        return True
    for _, d in configs:
        if str(d.get("model_type", "")).lower() in ("mamba", *_OTHER_SSM):
            return True
        if "d_model" in d and "n_layer" in d and "ssm_cfg" in d:
            return True
    return False


def _config_from_files(configs: list, notes: list) -> tuple[dict, str]:
    """MambaConfig fields stated by config.json (either layout), and which layout it was."""
    for src, d in configs:
        if d.get("family") == "mamba":  # SeqScope's own metadata (save_model)
            return {k: v for k, v in d.items() if k in MambaConfig.__dataclass_fields__}, "SeqScope"
        mt = str(d.get("model_type", "")).lower()
        if mt == "mamba2":  # a Mamba2 checkpoint goes to engine.models.mamba2; these weights are not one
            raise LoadError(f"{src} says model_type 'mamba2', but the weights have Mamba (1)'s layout "
                            f"({_MAMBA1_KEYS}): correct the config's model_type, or check the weights")
        if mt in _OTHER_SSM:
            raise LoadError(f"{src} says model_type {mt!r} ({_OTHER_SSM[mt]}): SeqScope reads Mamba (1) models so "
                            "far; this family is not supported yet")
        if mt == "mamba":
            act = str(d.get("hidden_act", "silu"))
            if act not in ("silu", "swish"):
                raise LoadError(f"{src} gives hidden_act {act!r}; SeqScope's Mamba supports silu only")
            c = StatedConfig(d, src)
            out = {"norm_eps": c.number("layer_norm_epsilon", 1e-5)}
            out.update(c.sizes((("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"),
                                ("vocab_size", "vocab_size"), ("d_state", "state_size"), ("d_conv", "conv_kernel"),
                                ("d_inner", "intermediate_size"))))
            if "d_inner" not in out and "expand" in d and "d_model" in out:
                out["d_inner"] = c.whole("expand") * out["d_model"]
            if d.get("time_step_rank") != "auto" and "time_step_rank" in d:  # "auto": from d_model
                out["dt_rank"] = c.whole("time_step_rank")
            if "use_bias" in d:
                out["in_proj_bias"] = out["out_proj_bias"] = c.flag("use_bias")
            if "use_conv_bias" in d:
                out["conv_bias"] = c.flag("use_conv_bias")
            if "tie_word_embeddings" in d:
                out["tie_embeddings"] = c.flag("tie_word_embeddings")
            return out, "transformers MambaForCausalLM"
        if "d_model" in d and "n_layer" in d:
            c = StatedConfig(d, src)
            ssm = c.mapping("ssm_cfg", {}) if d.get("ssm_cfg") is not None else StatedConfig({}, src)
            if str(ssm.get("layer", "Mamba1")) == "Mamba2":
                raise LoadError(f"{src}: ssm_cfg layer 'Mamba2', but the weights have Mamba (1)'s layout "
                                f"({_MAMBA1_KEYS}): correct the config, or check the weights")
            if str(ssm.get("layer", "Mamba1")) != "Mamba1":
                raise LoadError(f"{src}: ssm_cfg layer {ssm['layer']!r} is not supported")
            if d.get("d_intermediate"):
                raise LoadError(f"{src}: d_intermediate={d['d_intermediate']} adds MLP blocks between the mixers, "
                                "which SeqScope's Mamba does not have")
            if d.get("attn_layer_idx"):
                raise LoadError(f"{src}: attn_layer_idx={d['attn_layer_idx']} adds attention layers (a hybrid "
                                "model), which SeqScope's Mamba does not have")
            vocab = c.whole("vocab_size")
            pad = c.whole("pad_vocab_size_multiple", 1) or 1
            if vocab % pad:
                vocab += pad - vocab % pad
            dm = c.whole("d_model")
            out = {"d_model": dm, "n_layer": c.whole("n_layer"), "vocab_size": vocab,
                   "d_inner": ssm.whole("expand", 2) * dm, "d_state": ssm.whole("d_state", 16),
                   "d_conv": ssm.whole("d_conv", 4), "conv_bias": ssm.flag("conv_bias", True),
                   "in_proj_bias": ssm.flag("bias", False), "out_proj_bias": ssm.flag("bias", False),
                   "norm": "rms" if c.flag("rms_norm", True) else "layer",
                   "norm_eps": c.number("norm_epsilon", 1e-5),
                   "tie_embeddings": c.flag("tie_embeddings", True)}
            if ssm.get("dt_rank", "auto") != "auto":
                out["dt_rank"] = ssm.whole("dt_rank")
            if pad > 1 and vocab != c.whole("vocab_size"):
                notes.append(f"vocab_size {d['vocab_size']} padded to {vocab} (pad_vocab_size_multiple {pad})")
            return out, "mamba_ssm"
    return {}, ""


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict]:
    """File keys → ``MambaForCausalLM`` names, whatever the prefix (``backbone.``, none, ``model.``)
    and with mamba_ssm's ``embedding`` for ``embeddings``.  Returns (canonical → tensor,
    canonical → file key)."""
    prefixes = {m.group(1) for k in tensors if (m := _A_LOG.match(k))}
    if len(prefixes) != 1:
        found = ", ".join(sorted(prefixes)) or "none"
        raise LoadError(f"{name}: expected Mamba layer weights named …layers.{{i}}.mixer.A_log under one prefix "
                        f"(found prefixes: {found})")
    prefix = prefixes.pop()
    outer = prefix[: -len("backbone.")] if prefix.endswith("backbone.") else ""
    canon, origin = {}, {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            if rest.startswith("embedding."):
                rest = "embeddings." + rest[len("embedding."):]
            cn = "backbone." + rest
        elif k.startswith(outer) and k[len(outer):].startswith("lm_head."):
            cn = k[len(outer):]
        else:
            cn = k
        canon[cn] = v
        origin[cn] = k
    return canon, origin


def _infer_config(canon: dict, stated: dict) -> dict:
    """MambaConfig fields from the weights, where the config files left them out."""
    out = dict(stated)
    n = 0
    while f"backbone.layers.{n}.mixer.A_log" in canon:
        n += 1
    out.setdefault("n_layer", n)
    a = canon.get("backbone.layers.0.mixer.A_log")
    if a is not None and a.ndim == 2:
        out.setdefault("d_inner", int(a.shape[0]))
        out.setdefault("d_state", int(a.shape[1]))
    emb = canon.get("backbone.embeddings.weight")
    if emb is not None and emb.ndim == 2:
        out.setdefault("vocab_size", int(emb.shape[0]))
        out.setdefault("d_model", int(emb.shape[1]))
    cw = canon.get("backbone.layers.0.mixer.conv1d.weight")
    if cw is not None and cw.ndim == 3:
        out.setdefault("d_conv", int(cw.shape[-1]))
    dtw = canon.get("backbone.layers.0.mixer.dt_proj.weight")
    if dtw is not None and dtw.ndim == 2:
        out.setdefault("dt_rank", int(dtw.shape[1]))
    out.setdefault("in_proj_bias", "backbone.layers.0.mixer.in_proj.bias" in canon)
    out.setdefault("out_proj_bias", "backbone.layers.0.mixer.out_proj.bias" in canon)
    out.setdefault("conv_bias", "backbone.layers.0.mixer.conv1d.bias" in canon)
    out.setdefault("norm", "layer" if "backbone.layers.0.norm.bias" in canon else "rms")
    if "lm_head.weight" not in canon:
        out["tie_embeddings"] = True
    elif "tie_embeddings" not in stated:
        lm, e = canon["lm_head.weight"], canon.get("backbone.embeddings.weight")
        out["tie_embeddings"] = e is not None and lm.shape == e.shape and bool(torch.equal(lm, e))
    return out


def load_mamba(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> MambaModel:
    """Build a :class:`MambaModel` from a checkpoint's tensors and the configs stored with it
    (``[(where, dict)]``).  Every problem is a LoadError naming the keys involved."""
    notes: list[str] = []
    stated, layout = _config_from_files(configs, notes)
    canon, origin = _canonical_names(tensors, name)
    fields = _infer_config(canon, stated)
    cfg = config_from_fields(MambaConfig, fields, name=name, label="Mamba", tensors=tensors)
    cfg = untied_if_the_file_says_so(cfg, "tie_embeddings", canon, "lm_head.weight", "backbone.embeddings.weight", notes)
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in canon:
        e = canon.get("backbone.embeddings.weight")
        expected = {**expected, "lm_head.weight": tuple(e.shape) if e is not None else (cfg.vocab_size, cfg.d_model)}
    what = f"a Mamba model ({layout or 'layout from the weights'}: d_model={cfg.d_model}, n_layer={cfg.n_layer}, " \
           f"d_inner={cfg.d_inner}, d_state={cfg.d_state}, d_conv={cfg.d_conv}, dt_rank={cfg.dt_rank}, " \
           f"vocab_size={cfg.vocab_size})"
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    if unused:
        notes.append(unused_note(unused))
    weights = {cn: canon[cn] for cn in expected}
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    model = build_model(MambaModel, cfg, weights, name=name, label="Mamba", **kwargs)
    model.load_info.update({"format": fmt, "layout": layout or "inferred from the weights"})
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_mamba
load = load_mamba
