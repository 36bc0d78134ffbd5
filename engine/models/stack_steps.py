"""How the classic stack steps through one direction of one layer (see :mod:`engine.models.stack`
for the chunking rules these functions keep): the fused stretches, the edited steps, the
reversal of a backward direction, and a bidirectional intervention's share per direction."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..interventions import Intervention
from .base import RecurrentCell


def reverse_index(lengths, T: int, device) -> torch.Tensor:
    """[T, B] index that reverses each sequence within its own length (padding stays put).
    It is its own inverse."""
    idx = torch.arange(T, device=device)[:, None].repeat(1, len(lengths))
    for b, L in enumerate(lengths):
        idx[:L, b] = torch.arange(L - 1, -1, -1, device=device)
    return idx


def gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 0, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand_as(x))


def direction_part(iv: Intervention, source, width: int, d: int, directions: int):
    """The share of a (possibly bidirectional) layer intervention that acts on direction d,
    with units renumbered within that direction; None if it touches none of them."""
    if directions == 1:
        return iv, source
    lo, hi = d * width, (d + 1) * width
    units = list(range(width)) if iv.units is None else [u - lo for u in iv.units if lo <= u < hi]
    if not units:
        return None
    cols = [u + lo for u in units] if iv.units is None else [i for i, u in enumerate(iv.units) if lo <= u < hi]
    value = iv.value
    if isinstance(value, tuple):
        value = tuple(value[i] for i in cols)
    if source is not None:
        import numpy as np

        source = np.asarray(source)
        full = source.shape[-1] == 2 * width
        source = source[..., [u + lo for u in units]] if full else source[..., cols]
    part = replace(iv, units=None if iv.units is None else units, value=value)
    return part, source


def run_direction(cell: RecurrentCell, x, start, state, chunk, want_sites, edits, keep, tick, breaks=(),
                   x_from=None):
    """One direction of one layer over steps ``start..``; ``x`` holds the inputs of steps
    ``x_from..`` (default ``start``; the chunk boundary before ``start`` lets edited steps
    project their inputs a whole chunk at a time, see :func:`_chunk_step_inputs`).

    Chunks end at multiples of ``chunk``.  Inside a chunk, a stretch without edits comes from
    one fused call from the stretch's first step to the chunk's end, whatever comes later:
    every value before a step is computed the same way whatever happens at or after it, so
    a re-run that starts at a stretch start (a chunk boundary, an edited step, a break)
    from the recorded state reproduces a full run bit for bit.
    """
    x_from = start if x_from is None else x_from
    T = x_from + x.shape[0]
    edit_steps = sorted({int(s) for es in edits.values() for e in es for s in e.steps if s >= start})
    breaks = sorted(b for b in breaks if start < b < T)
    B = x.shape[1]
    y_out = x.new_empty(T - start, B, cell.output_size)
    rec_out = {s: x.new_empty(T - start, B, cell.site_width(s)) for s in want_sites}

    def take(y, rec, n, at):
        """Keep the first ``n`` steps of ``y`` and ``rec`` as steps ``at..at+n-1``."""
        i = at - start
        y_out[i : i + n] = y[:n]
        for s in want_sites:
            rec_out[s][i : i + n] = rec[s][:n]

    a = start
    while a < T:
        b = min((a // chunk + 1) * chunk, T)
        todo = [t for t in edit_steps if a <= t < b]
        cuts = [t for t in breaks if a < t < b]
        xa = x[a - x_from : b - x_from]
        inputs = None  # the chunk's step inputs, projected once its first edited step comes
        o = a
        while o < b:
            if todo and todo[0] == o:  # edited steps, written out with their edits
                if inputs is None:
                    inputs = _chunk_step_inputs(cell, x, x_from, a, b, chunk)
                n = 1
                while n < len(todo) and todo[n] == o + n:
                    n += 1
                del todo[:n]
                y, state, rec = _edited_steps(cell, inputs[o - a : o - a + n], state, edits, o, want_sites)
                take(y, rec, n, o)
                o += n
                continue
            stop = min([b] + todo[:1] + [t for t in cuts if t > o][:1])
            # A fresh copy: the kernels' results can depend on where the data sits in memory.
            xs = xa[o - a :].clone()
            y, end_state = cell.fused(xs, state)
            sites = want_sites | (cell.state_sites if stop < b else frozenset())
            rec = cell.recover(xs, y, state, sites) if sites else {}
            take(y, rec, stop - o, o)
            state = end_state if stop == b else cell.state_at(y, rec, stop - o - 1)
            o = stop
        if keep is not None:
            keep(b, state)
        tick()
        a = b
    return y_out, rec_out


def _chunk_step_inputs(cell: RecurrentCell, x, x_from, a, b, chunk):
    """``cell.step_inputs`` of steps ``a..b-1`` (``x`` holds steps ``x_from..``).

    One matmul for the whole chunk instead of one per edited step.  A matmul's row can depend
    on how many rows it multiplies (and where they sit in memory), so the rows are always those
    of the whole chunk, from its boundary, in a fresh copy: a re-run that resumes at an edited
    step inside the chunk multiplies the same rows as the full run did, and gets the same bits.
    """
    c = (a // chunk) * chunk
    if c < x_from:  # cannot happen through RecurrentStack.forward, which passes the boundary
        raise ValueError(f"the inputs of steps {c}..{x_from - 1} are needed to re-run step {a}")
    return cell.step_inputs(x[c - x_from : b - x_from].clone())[a - c :]


def _edited_steps(cell: RecurrentCell, inputs, state, edits: dict, a: int, want_sites):
    """Steps ``a..a+n-1`` written out with their edits (``inputs`` their step inputs): in one
    compiled call where the cell has one for these edits (``edited_stretch``), else step by
    step.  The choice depends only on the model and on all of the layer's edits, never on
    where the stretch begins, so a re-run from the cache takes the same path as a full run."""
    fast = getattr(cell, "edited_stretch", None)
    done = fast(inputs, state, edits, a) if fast is not None else None
    if done is not None:
        return done
    ys, recs = [], {s: [] for s in want_sites}
    for k in range(inputs.shape[0]):
        y_t, state, rec_t = cell.step(inputs[k], state, _edit_hook(edits, a + k))
        ys.append(y_t)
        for s in want_sites:
            recs[s].append(rec_t[s])
    return torch.stack(ys), state, {s: torch.stack(v) for s, v in recs.items()}


def _edit_hook(edits: dict, t: int):
    """``edit(site, value)`` for ``cell.step`` at step ``t``: every intervention active at
    ``t`` on that site, in order; sites without one pass through untouched."""
    active = {}
    for site, es in edits.items():
        at_t = [e for e in es if e.active_at(t)]
        if at_t:
            active[site] = at_t

    def edit(site, v):
        for e in active.get(site, ()):
            v = e.apply_step(v, t)
        return v

    return edit
