"""The forward pass shared by the families whose layers run forwards only, chunk by chunk
(Mamba, RWKV, minGRU/minLSTM, and the linear recurrences after them).

A subclass of :class:`ChunkedLayerModel` writes only what is its own:

``SITES``             the probe sites of a layer, in display order (``"out"`` is the residual
                      stream the next layer reads; ``"attn"``, when present, is computed after
                      the layer has run, from the sites in ``ATTENTION_NEEDS``)
``SITE_ALIASES``      site -> the site whose value it names (the same array, the same edits):
                      the names every family shares, ``mixer`` and ``mlp``, where a family had
                      its own name first (RWKV's ``att`` and ``ffn``); see ``engine.probes``
``_embed_tokens(x)``  token ids [T, B] -> the input of layer 0 [T, B, d]
``_site_shapes()``    site -> per-token shape, for the arrays a layer run fills
``initial_state(B)``  a layer's state before step 0: a tuple of tensors
``_layer_chunk(k, h, a, state, edits, record)``
                      steps ``a..a+n-1`` of layer ``k`` (``h`` its input [n, B, d]):
                      ``(values by site, state after the last step)``
``_layer_chunk_into(k, h, a, state, edits, record, dest)``
                      instead of ``_layer_chunk``, for a family that writes a large site
                      (a full state) in place: the same steps, their values written into
                      ``dest`` (site -> that chunk's rows of the layer's arrays); returns
                      the state after the last step
``_attention(k, out, old, s, T, B)``
                      the ``attn`` probe of layer ``k`` (only for families that have one)
``_logits(h)``        the head on a few rows of the last layer's output

This module then gives: the loop over layers that re-runs each one only from the step the
prefix cache says it may change (``resume``), recording only the probes asked for, stitching
new steps after the previous run's, the head applied chunk by chunk (so a re-run computes
every row exactly as a full run does), progress and cancellation once per chunk, and the
states kept at chunk boundaries for the next re-run.
"""
from __future__ import annotations

import json
from typing import Callable

import torch

from ..errors import Cancelled
from ..probes import layer_probe
from .base import EditPlan, Resume, SequenceModel, bind_layerwise, stitch
from .layer_state import LayerStates, columns_of, ending_inside


class ChunkedLayerModel(LayerStates, SequenceModel):
    SITES: tuple[str, ...] = ()
    #: sites recorded as well whenever ``attn`` is asked for (it is computed from them)
    ATTENTION_NEEDS: frozenset = frozenset()
    #: site -> why it cannot take an intervention
    NOT_EDITABLE: dict = {}
    #: site -> the site whose value it is under another name (recorded and edited as that one)
    SITE_ALIASES: dict = {}

    # -- what a subclass provides -------------------------------------------------------
    def _embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _site_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def initial_state(self, batch: int) -> tuple:
        raise NotImplementedError

    def _layer_chunk(self, k: int, h: torch.Tensor, a: int, state: tuple, edits: dict, record: set):
        raise NotImplementedError

    def _attention(self, k, out, old, s, T, B) -> torch.Tensor:
        raise NotImplementedError

    def _layer_chunk_into(self, k: int, h: torch.Tensor, a: int, state: tuple, edits: dict, record: set,
                          dest: dict) -> tuple:
        """:meth:`_layer_chunk`, its values copied into ``dest`` (site -> [n, B, ...] rows of
        the layer's arrays); returns the state after the chunk.  A family overrides this to
        write a site straight into ``dest`` and save a copy of it."""
        vals, state = self._layer_chunk(k, h, a, state, edits, record)
        for site, rows in dest.items():
            rows.copy_(vals[site])
        return state

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _attention_needs(self, k: int) -> frozenset:
        """The sites the ``attn`` probe of layer ``k`` is computed from: ``ATTENTION_NEEDS``,
        unless a family's layers are of several kinds (RecurrentGemma)."""
        return self.ATTENTION_NEEDS

    # -- the attention window (families with an ``attn`` probe) ---------------------------
    @property
    def attention_window(self):
        return self._window

    @attention_window.setter
    def attention_window(self, value):
        from .mamba import AttentionWindow

        if not isinstance(value, AttentionWindow):
            if isinstance(value, dict):
                value = AttentionWindow(**value)
            else:
                rows, cols = value
                value = AttentionWindow(tuple(rows), tuple(cols))
        self._window = value
        self._specs = self._build_specs()

    def _window_json(self) -> str:
        return json.dumps({"rows": list(self._window.rows), "cols": list(self._window.cols)})

    # -- shared --------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        return self.SITES

    def probe_specs(self) -> list:
        return list(self._specs)

    def bind(self, interventions, lengths, sources: dict | None = None) -> EditPlan:
        return bind_layerwise(self, interventions, lengths, sources, not_editable=self.NOT_EDITABLE,
                              aliases=self.SITE_ALIASES)

    def layer_output_probe(self, layer: int) -> str:
        return layer_probe(layer, "out")

    def forward(self, x: torch.Tensor, lengths: list[int], want: set[str], plan: EditPlan | None = None, *,
                chunk: int = 256, resume: Resume | None = None, keep_state: Callable | None = None,
                progress: Callable | None = None, should_stop: Callable | None = None,
                initial_state: dict | None = None, final_state: dict | None = None) -> dict[str, torch.Tensor]:
        """``x`` [T, B] token ids; returns ``{probe: [T, B, ...]}`` for the probes in ``want``
        (see ``RecurrentStack.forward`` for ``resume`` and ``keep_state``; a layer's state is
        whatever :meth:`initial_state` returns).  ``initial_state``: ``{(layer, 0): state}``
        to start from instead (:meth:`split_initial_state`); ``final_state``: a dict filled
        with each sequence's state after its own last step, ``{name: [B, *shape]}``."""
        plan = plan or EditPlan()
        T, B = x.shape[0], x.shape[1]
        L = self.num_layers
        starts = [min(s, T) for s in resume.starts] if resume else [0] * L
        old = resume.old if resume else {}

        out: dict[str, torch.Tensor] = {}
        s0 = starts[0]
        below = self._embed_tokens(x[s0:])
        for e in plan.whole.get("embed", []):
            below = e.apply_all(below, s0)
        if "embed" in want:
            out["embed"] = stitch(old, "embed", below, s0, T)
        below_from, below_name = s0, "embed"
        total = max(1, sum(-(-(T - s) // chunk) for s in starts if s < T))
        done = [0]

        def tick():
            if should_stop is not None and should_stop():
                raise Cancelled("run cancelled")
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        for k in range(L):
            name_out = layer_probe(k, "out")
            want_sites = {s for s in self.sites if layer_probe(k, s) in want}
            aliased = {s: self.SITE_ALIASES[s] for s in want_sites if s in self.SITE_ALIASES}
            record = {self.SITE_ALIASES.get(s, s) for s in want_sites - {"attn"}}
            if "attn" in want_sites:
                record |= self._attention_needs(k)
            s = starts[k]
            if s >= T:  # the layer cannot change: the previous run's arrays
                for site in record | want_sites:
                    out[layer_probe(k, site)] = old[layer_probe(k, site)][:T]
                below, below_from, below_name = old[name_out][:T], 0, name_out
                if final_state is not None:
                    final_state.update(self.layer_final_state(k, lengths, T, {}, resume.finals))
                continue
            xin = below[s - below_from:] if s >= below_from else torch.cat([old[below_name][s:below_from], below])
            state = resume.states[(k, 0)] if s else (initial_state or {}).get((k, 0))
            state = self.initial_state(B) if state is None else state
            keep = (lambda step, st, key=(k, 0): keep_state(key, step, st)) if keep_state else None
            ends = {b: L for b, L in enumerate(lengths) if L > s} if final_state is not None else None
            reached: dict = {}
            recs = self._run_layer(k, xin, s, state, chunk, record, plan.layer.get((k, 0), {}), keep, tick, ends,
                                   reached)
            if final_state is not None:
                final_state.update(self.layer_final_state(k, lengths, s, reached, resume.finals if resume else None))
            below, below_from, below_name = recs["out"], s, name_out
            for site in record:
                out[layer_probe(k, site)] = stitch(old, layer_probe(k, site), recs[site], s, T)
            for site, same in aliased.items():  # one array under both names
                out[layer_probe(k, site)] = out[layer_probe(k, same)]
            if "attn" in want_sites:
                out[layer_probe(k, "attn")] = self._attention(k, out, old, s, T, B)
        if "logits" in want:
            # whole head chunks from the one holding the first changed row
            a0 = (min(resume.logits_from, below_from) // chunk) * chunk if resume else 0
            if a0 < T:
                h = below[a0 - below_from:] if a0 >= below_from else torch.cat([old[below_name][a0:below_from], below])
                logits = torch.cat([self._logits(h[i:i + chunk].clone()) for i in range(0, h.shape[0], chunk)])
                for e in plan.whole.get("logits", []):
                    logits = e.apply_all(logits, a0)
                out["logits"] = stitch(old, "logits", logits, a0, T)
            else:
                out["logits"] = old["logits"][:T]
        return out

    def _run_layer(self, k, xin, start, state, chunk, record, edits, keep, tick, ends=None, reached=None) -> dict:
        """Layer ``k`` over steps ``start..`` (``xin`` holds its input for those steps), one
        chunk of the fixed grid (multiples of ``chunk``) at a time.  ``ends``: ``{sequence: length}``
        of the sequences whose final state to find, filled into ``reached``: a sequence that ends
        inside a chunk runs that chunk's first part once more, alone (so the grid and every
        recorded value stay as in a run without it); ``reached[sequence]`` becomes its state (a
        batch of one)."""
        T = start + xin.shape[0]
        B = xin.shape[1]
        shapes = self._site_shapes()
        recs = {s: xin.new_empty(T - start, B, *shapes[s]) for s in record | {"out"}}
        a = start
        axes = self.state_batch_axes() if ends else None
        while a < T:
            b = min((a // chunk + 1) * chunk, T)
            h = xin[a - start:b - start].clone()  # a fresh copy: kernels' results can depend on alignment
            i = a - start
            for col in ending_inside(ends or {}, a, b):
                with self.sequences_alone([col]):
                    reached[col] = self._layer_chunk_into(k, xin[i:ends[col] - start, [col]].clone(), a,
                                                          self.state_columns(state, [col], axes),
                                                          columns_of(edits, [col]), set(), {})
            state = self._layer_chunk_into(k, h, a, state, edits, record,
                                           {site: rows[i:i + b - a] for site, rows in recs.items()})
            if keep is not None:
                keep(b, tuple(t.clone() for t in state))
            for col in [c for c, L in (ends or {}).items() if L == b]:  # sequences ending with the chunk
                reached[col] = self.state_columns(state, [col], axes)
            tick()
            a = b
        return recs

