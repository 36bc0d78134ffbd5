"""How much memory a run will take, worked out before it starts, and the budget it must fit.

A run keeps every recorded probe for every token: ``tokens x (values per token) x bytes per
value``, from the model's probe table.  On top of that it holds, roughly, its inputs, the
output of the layer being computed and of the one below it (which it reads), the logits while
their chunks are joined, a chunk's temporaries, and with a prefix cache the states kept at
chunk boundaries and the previous run's arrays (until this run replaces them).

:func:`estimate_run_bytes` gives the whole as a :class:`RunEstimate` (per probe and per kind of
working memory); :func:`default_budget` is a share of the memory the machine has available;
:func:`check_budget` raises :class:`RunTooLarge` -- one sentence with the estimate, the budget
and what would fit -- before anything is allocated.  ``engine.run``, ``seqscope trace`` and the
workbench all use these.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from .errors import InputError
from .probes import match_probes

#: share of the available memory a run may take by default (the rest stays for the system,
#: the program itself and the estimate's own error)
DEFAULT_FRACTION = 0.5
#: the default budget never exceeds this, however large the machine: a run past it is not an
#: accident to risk without asking for it (``max_bytes=`` / ``--max-memory``)
DEFAULT_CAP = 64 * 2**30
#: share of a GPU's free memory a run may take by default (the arrays are computed there)
GPU_FRACTION = 0.9
#: when the machine's memory cannot be read
FALLBACK_BUDGET = 4 * 2**30
#: bytes per token besides the arrays: token ids (int64 in the batch, int64 and int32 after),
#: the text piece of each token (a reference, twice) -- about 40; rounded up
PER_TOKEN_OVERHEAD = 64


class RunTooLarge(InputError):
    """A run whose estimated memory is past its budget; ``estimate`` and ``budget`` say by how
    much.  The message names what would fit."""

    def __init__(self, estimate: "RunEstimate", budget: int, *, budget_source: str = "",
                 override: str = "max_bytes='{size}'"):
        self.estimate = estimate
        self.budget = int(budget)
        self.budget_source = budget_source
        self.override = override
        super().__init__(self.explain())

    def explain(self, override: str | None = None) -> str:
        """The one-sentence refusal; ``override`` names how to raise the budget (its ``{size}``
        is replaced by a size that would do), e.g. ``"--max-memory {size}"``; ``""`` leaves that
        option out (where the budget cannot be raised)."""
        est, budget = self.estimate, self.budget
        how = (self.override if override is None else override).replace("{size}", format_size(est.total * 1.1))
        where = f" ({self.budget_source})" if self.budget_source else ""
        options = []
        drop = est.probes_to_drop(budget)
        largest = est.largest_probe()
        if drop:
            shown = ", ".join(drop[:4]) + (f" and {len(drop) - 4} more" if len(drop) > 4 else "")
            options.append(f"record fewer probes (without {shown} it fits; the largest is {largest}, "
                           f"{format_bytes(est.probes[largest])})")
        elif largest is not None and est.total - est.arrays <= budget:
            options.append(f"record fewer probes (the largest is {largest}, {format_bytes(est.probes[largest])})")
        fits = est.tokens_that_fit(budget)
        if fits > 0:
            options.append(f"give a shorter input (about {fits:,} tokens fit)")
        if how:
            avail, _ = available_memory()
            short = f", more than the {format_bytes(avail)} available now" if avail and est.total > avail else ""
            options.append(f"raise the budget ({how}{short})")
        if not options:
            options.append("free some memory")
        n_probes = len(est.probes)
        return (f"this run would need about {format_bytes(est.total)} of memory "
                f"({est.n_tokens:,} tokens, {n_probes} probe{'s' if n_probes != 1 else ''}"
                f"{': ' + est.breakdown() if n_probes else ''}), more than its budget of "
                f"{format_bytes(budget)}{where}: " + _or(options))


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


@dataclass(frozen=True)
class RunEstimate:
    """A run's memory, worked out before it starts.  ``probes``: bytes of each recorded array
    (as the trace will hold it); ``working``: what the run holds besides them (kind -> bytes)."""

    n_tokens: int
    probes: Mapping[str, int]
    working: Mapping[str, int] = field(default_factory=dict)
    #: bytes that grow with the number of tokens, per token (for "a shorter input")
    per_token: float = 0.0

    @property
    def arrays(self) -> int:
        """The recorded arrays alone (what the trace holds)."""
        return int(sum(self.probes.values()))

    @property
    def total(self) -> int:
        return self.arrays + int(sum(self.working.values()))

    def __int__(self) -> int:
        return self.total

    def largest_probe(self) -> str | None:
        return max(self.probes, key=self.probes.get) if self.probes else None

    def probes_to_drop(self, budget: int) -> list[str]:
        """The largest probes whose leaving out brings the run within ``budget`` (fewest first,
        largest first); empty when leaving them all out would not do."""
        over = self.total - budget
        dropped, freed = [], 0
        for name in sorted(self.probes, key=self.probes.get, reverse=True):
            if freed >= over:
                break
            dropped.append(name)
            freed += self.probes[name]
        return dropped if freed >= over and len(dropped) < len(self.probes) else []

    def tokens_that_fit(self, budget: int) -> int:
        """About how many tokens would fit in ``budget`` with the same probes."""
        if self.per_token <= 0:
            return self.n_tokens if self.total <= budget else 0
        fixed = max(0, self.total - self.per_token * self.n_tokens)
        fit = int((budget - fixed) / self.per_token)
        return max(0, fit // 1000 * 1000 if fit >= 10_000 else fit)

    def breakdown(self, n: int = 3) -> str:
        """The largest parts, e.g. ``"layers.1.c 1.0 GB, layers.1.h 1.0 GB, ... ; working 1.2 GB"``."""
        top = sorted(self.probes.items(), key=lambda kv: kv[1], reverse=True)
        parts = [f"{name} {format_bytes(b)}" for name, b in top[:n]]
        if len(top) > n:
            parts.append(f"{len(top) - n} more {format_bytes(sum(b for _, b in top[n:]))}")
        work = int(sum(self.working.values()))
        if work:
            parts.append(f"working memory {format_bytes(work)}")
        return ", ".join(parts)


# -- the estimate ------------------------------------------------------------------------


def _itemsize(dtype) -> int:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return np.dtype(dtype).itemsize


def _trace_itemsize(dtype) -> int:
    """Bytes per value in a trace: float32/float64 as computed, anything else as float32."""
    size = _itemsize(dtype)
    return size if dtype in (torch.float32, torch.float64, np.float32, np.float64) else 4


def _count(shape) -> int:
    return math.prod(int(d) for d in shape)


def _state_bytes(model, batch: int) -> int:
    """Bytes of one layer's recurrent state (all directions) for a batch of ``batch``."""
    try:
        if hasattr(model, "cells"):  # RecurrentStack: one cell per direction
            tensors = [cell.initial_state(batch, model.dtype, "cpu") for cell in model.cells[0]]
        else:
            tensors = [model.initial_state(batch)]
    except Exception:  # a model without either: the estimate only loses a small term
        return 0
    total = 0
    stack = list(tensors)
    while stack:
        t = stack.pop()
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, (tuple, list)):
            stack.extend(t)
    return total


def _probe_names(probes, specs: dict) -> list[str]:
    """The probe names ``probes`` (globs, or exact names) chooses, in table order."""
    if probes is None:
        return []
    if not isinstance(probes, str):
        exact = set(probes)
        if exact <= specs.keys():  # names already resolved (engine.run's own check): no globbing
            return [name for name in specs if name in exact]
    return match_probes(probes, list(specs))


def estimate_run_bytes(model, n_tokens: int, probes="*", dtype=None, *, lengths=None, chunk: int = 256,
                       cache=None) -> RunEstimate:
    """The memory a run of ``model`` on ``n_tokens`` tokens recording ``probes`` (globs, as for
    ``engine.run``) will take, in bytes, with a per-probe breakdown.  Nothing is allocated.

    ``dtype``: the model's compute dtype (default: the model's).  ``lengths``: the sequences'
    lengths when there are several (a batch pads them all to the longest, and the trace then
    holds a second, unpadded copy).  ``cache``: the :class:`~engine.run.PrefixCache` the run
    will use (its kept states and the previous run's arrays count too).
    """
    dtype = dtype or getattr(model, "dtype", torch.float32)
    lengths = list(lengths) if lengths else [int(n_tokens)]
    n = int(sum(lengths))
    T, B = max(lengths), len(lengths)
    padded = T * B
    value = _trace_itemsize(dtype)
    compute = _itemsize(dtype)
    specs = {s.name: s for s in model.probe_specs()}
    names = _probe_names(probes, specs)
    arrays = {name: n * _count(specs[name].shape) * value for name in names}

    working: dict[str, int] = {}
    working["inputs"] = n * PER_TOKEN_OVERHEAD + padded * 8
    if not model.takes_tokens:
        working["inputs"] += (n + padded) * model.input_size * 8  # the values, then the batch
    if B > 1 or value != compute:  # the trace is a copy of the padded batch
        working["padded batch"] = sum(padded * _count(specs[nm].shape) * compute for nm in names)
    L = int(getattr(model, "num_layers", 0) or 0)
    try:
        out_width = _count(specs[model.layer_output_probe(L - 1)].shape) if L else 0
    except (NotImplementedError, KeyError):
        out_width = 0
    # the layer being computed and the one below it that it reads
    working["layer outputs"] = 2 * padded * out_width * compute
    if "logits" in names:  # the head's chunks are joined into one array
        working["logits chunks"] = padded * _count(specs["logits"].shape) * compute
    # one chunk of every probe of a layer at a time, with the kernels' temporaries
    layer_width = sum(_count(s.shape) for s in specs.values() if s.layer == 0)
    working["chunk buffers"] = 4 * min(chunk, T) * B * layer_width * compute
    if cache is not None:
        boundaries = -(-T // max(1, chunk))
        working["kept states"] = boundaries * L * _state_bytes(model, B)
        last = getattr(cache, "_last", None)
        if last is not None:  # the previous run's arrays live until this one replaces them
            working["previous run"] = int(sum(t.numel() * t.element_size() for t in last.padded.values()))
    working = {k: int(v) for k, v in working.items() if v}
    fixed = working.get("previous run", 0)
    total = sum(arrays.values()) + sum(working.values())
    per_token = (total - fixed) / max(1, n)
    return RunEstimate(n_tokens=n, probes=arrays, working=working, per_token=per_token)


# -- the budget --------------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    out = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def available_memory() -> tuple[int | None, str]:
    """Bytes of memory available for a new allocation without swapping, and where that came
    from; ``(None, why)`` when the system does not say."""
    info = _meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"], "available memory"
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return pages * size, "free memory"
    except (ValueError, OSError, AttributeError):
        pass
    return None, "the machine's memory is unknown"


def default_budget() -> tuple[int, str]:
    """The default memory budget of a run in bytes, and a few words saying what it is."""
    avail, what = available_memory()
    if avail is None:
        return FALLBACK_BUDGET, f"the default, as {what}"
    budget = int(avail * DEFAULT_FRACTION)
    if budget > DEFAULT_CAP:
        return DEFAULT_CAP, f"the default cap; {format_bytes(avail)} {what}"
    return budget, f"{int(DEFAULT_FRACTION * 100)}% of the {format_bytes(avail)} {what}"


def gpu_budget_for(device) -> tuple[int, str]:
    """The default budget of a run on a GPU: most of the GPU memory free now."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free * GPU_FRACTION), f"{int(GPU_FRACTION * 100)}% of the {format_bytes(free)} of free GPU memory"


def resolve_budget(max_bytes) -> tuple[float, str]:
    """``max_bytes`` as given to ``engine.run``: None for the default budget, a number of bytes,
    a size such as ``"16G"``, or ``math.inf`` for none."""
    if max_bytes is None:
        return default_budget()
    if isinstance(max_bytes, str):
        return parse_size(max_bytes), "as given"
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float, np.integer, np.floating)):
        raise InputError(f"max_bytes must be a number of bytes or a size such as '16G', got {max_bytes!r}")
    if math.isnan(max_bytes) or max_bytes <= 0:
        raise InputError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
    return max_bytes, "as given"


def check_budget(estimate: RunEstimate, budget: float, *, budget_source: str = "",
                 override: str = "max_bytes='{size}'") -> None:
    """Raise :class:`RunTooLarge` when ``estimate`` is over ``budget`` bytes."""
    if estimate.total > budget:
        raise RunTooLarge(estimate, int(budget), budget_source=budget_source, override=override)


# -- sizes in words ----------------------------------------------------------------------

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``"16G"``, ``"512M"``, ``"1.5GB"``, ``"2GiB"``, ``"100000"`` (bytes) -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if m is None:
        raise InputError(f"{text!r} is not a size: give a number with K, M, G or T, e.g. 16G")
    size = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if size < 1 or not math.isfinite(size):
        raise InputError(f"{text!r} is not a usable size: give at least 1 byte, e.g. 512M")
    return int(size)


def format_bytes(n: float) -> str:
    """Bytes for people: ``"12.9 GB"`` (binary units, as ``parse_size`` reads them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_size(n: float) -> str:
    """A size ``parse_size`` reads back, rounded up: ``"14G"``, ``"600M"``."""
    for unit, mult in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= mult:
            return f"{math.ceil(n / mult)}{unit}"
    return str(int(math.ceil(n)))
