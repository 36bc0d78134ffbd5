"""A stretch of edited LSTM steps in one compiled loop (numba), for interactive steering.

An edited step cannot use torch's fused LSTM kernel, and written out with torch ops it costs
about 55 µs in Python on a 256-unit layer, most of it per-op overhead: an intervention over
2,000 positions takes over 100 ms.  Here the steps ``a..a+n-1`` of one layer run in one call:
per step, the gate pre-activations ``u_t + h W`` (``u_t`` the input projection with the bias,
from ``LSTMCell.step_inputs``, rows i, f, o, g), the gates, the edits of every site in the
order the interventions were given, ``c = i g + f c``, ``h = o tanh(c)``.

Used when every edit of the stretch is ``zero``/``set``/``add``/``scale`` (a ``patch`` reads
another run's values: the Python step handles it), the cell has no projection, the tensors are
float32/float64 on the CPU and numba can be imported; otherwise :func:`run` returns None and the
caller writes the steps out with ``LSTMCell.step``.  The numbers agree with that path to
rounding (the matmul sums in another order), and a step's values never depend on where its
stretch began, so a re-run from the prefix cache still equals a full run bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

SITES = ("gate_i", "gate_f", "gate_g", "gate_o", "c", "h")  # site codes of the edit table
OUTPUTS = ("h", "c", "gate_i", "gate_f", "gate_g", "gate_o")  # the kernel's output arrays, in its argument order
OPS = ("zero", "set", "add", "scale")


def _kernel():
    """The compiled stretch (:func:`engine.models.numba_kernels.lstm_stretch`)."""
    from .numba_kernels import lstm_stretch

    return lstm_stretch


def edit_table(edits: dict, a: int, n: int, width: int, dtype):
    """The edits of steps ``a..a+n-1`` as arrays for the kernel, in the order they apply;
    None when one of them is not a plain zero/set/add/scale."""
    site, op, act, units, vals = [], [], [], [], []
    for s, es in edits.items():
        for e in es:
            if s not in SITES or e.iv.op not in OPS:
                return None
            site.append(SITES.index(s))
            op.append(OPS.index(e.iv.op))
            act.append(e.mask[a:a + n].cpu().numpy())
            u = np.arange(width) if e.units is None else (
                np.arange(e.units.start, e.units.stop) if isinstance(e.units, slice) else e.units.cpu().numpy())
            units.append(u.astype(np.int64))
            v = np.zeros(len(u)) if e.value is None else np.broadcast_to(e.value.cpu().numpy(), (len(u),))
            vals.append(np.asarray(v, dtype=dtype))
    if not site:
        return None
    lens = np.array([len(u) for u in units], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    act = np.stack(act)  # [edits, n, batch]: the masks of steps a..a+n-1
    return (np.array(site, np.int64), np.array(op, np.int64), act, offsets, lens,
            np.concatenate(units), np.concatenate(vals).astype(dtype))


def run(cell, U: torch.Tensor, state, edits: dict, a: int):
    """Steps ``a..a+n-1`` of an LSTM cell with their edits (``U`` their step inputs [n, B, 4H]);
    ``(h [n, B, H], state after, records by site)``, or None where the compiled loop does not
    apply (see the module docstring)."""
    from .family import numba_available

    h0, c0 = state
    w_h, w_hr = cell._step_weights[2:]
    if (w_hr is not None or U.device.type != "cpu" or U.dtype not in (torch.float32, torch.float64)
            or not numba_available()):
        return None
    n, B, _ = U.shape
    H = cell.hidden_size
    dtype = np.float32 if U.dtype == torch.float32 else np.float64
    table = edit_table(edits, a, n, H, dtype)
    if table is None:
        return None
    out = {s: torch.empty(n, B, H, dtype=U.dtype) for s in OUTPUTS}
    h, c = h0.detach().clone().contiguous(), c0.detach().clone().contiguous()
    _kernel()(U.contiguous().numpy(), h.numpy(), c.numpy(), w_h.numpy(), *table,
              *(out[s].numpy() for s in OUTPUTS))
    return out["h"], (h, c), out
