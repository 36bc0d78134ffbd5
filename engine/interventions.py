"""Interventions: plain, serializable edits applied where a probe point is computed.

An :class:`Intervention` is data, separate from any model (as in pyvene).  The engine
applies it inside the recurrence, so an edit at step ``t`` flows into every later step
and leaves every earlier step untouched.

Positions are token indices within each sequence (the same positions are edited in every
sequence of a batch); units index the probe's last axis.  ``op`` is one of

``zero``   the selected entries become 0
``set``    they become ``value`` (a scalar, or one number per selected unit)
``add``    ``value`` is added (a steering vector)
``scale``  they are multiplied by ``value``
``patch``  they are replaced by the same entries of another run's activations
           (``value`` is a :class:`PatchSource` naming a trace file, or an array
           ``[tokens, units]`` / ``[units]`` held in memory)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import SeqScopeError

OPS = ("zero", "set", "add", "scale", "patch")


class InterventionError(SeqScopeError, ValueError):
    """An intervention that cannot apply to this model or input, with the reason in words."""


@dataclass(frozen=True)
class Span:
    """Positions ``start <= p < stop``; ``stop=None`` runs to the end of the sequence."""

    start: int = 0
    stop: int | None = None

    def __post_init__(self):
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise InterventionError(f"bad position span [{self.start}, {self.stop})")


@dataclass(frozen=True)
class PatchSource:
    """Activations to patch in, read from a saved trace: ``file``'s probe ``probe``
    (default: the intervention's own probe), sequence number ``sequence``."""

    file: str
    probe: str | None = None
    sequence: int = 0


def _normalise_positions(positions) -> tuple[int, ...] | Span | None:
    if positions is None or isinstance(positions, Span):
        return positions
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise InterventionError("position slices must have step 1")
        return Span(positions.start or 0, positions.stop)
    if isinstance(positions, range) and positions.step == 1:
        return Span(positions.start, positions.stop)
    if isinstance(positions, (int, np.integer)):
        positions = [positions]
    out = tuple(sorted({int(p) for p in positions}))
    if any(p < 0 for p in out):
        raise InterventionError(f"positions must be >= 0, got {list(out)}")
    return out


def _normalise_units(units) -> tuple[int, ...] | None:
    if units is None:
        return None
    if isinstance(units, (int, np.integer)):
        units = [units]
    out = tuple(int(u) for u in units)
    if len(set(out)) != len(out):
        raise InterventionError(f"units are listed twice: {list(out)}")
    return out


def _normalise_value(op: str, value):
    if op == "zero":
        if value not in (None, 0, 0.0):
            raise InterventionError("'zero' takes no value")
        return None
    if op == "patch":
        if isinstance(value, (PatchSource, np.ndarray)):
            return value
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        if isinstance(value, (str, Path)):
            return PatchSource(str(value))
        raise InterventionError("'patch' needs a PatchSource (a trace file) or an array of activations")
    if value is None:
        raise InterventionError(f"'{op}' needs a value")
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1:
        raise InterventionError(f"'{op}' takes a scalar or one number per unit, got shape {arr.shape}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True, eq=False)
class Intervention:
    probe: str
    op: str = "zero"
    value: Any = None
    positions: Any = None
    units: Any = None

    def __post_init__(self):
        if self.op not in OPS:
            raise InterventionError(f"unknown op {self.op!r}; use one of {', '.join(OPS)}")
        object.__setattr__(self, "value", _normalise_value(self.op, self.value))
        object.__setattr__(self, "positions", _normalise_positions(self.positions))
        object.__setattr__(self, "units", _normalise_units(self.units))

    # -- identity -------------------------------------------------------------
    def _key(self):
        value = self.value
        if isinstance(value, np.ndarray):
            value = ("array", value.shape, str(value.dtype), value.tobytes())
        return (self.probe, self.op, value, self.positions, self.units)

    def __eq__(self, other):
        return isinstance(other, Intervention) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    # -- where it acts ----------------------------------------------------------
    @property
    def first_position(self) -> int:
        """The earliest step this intervention can change."""
        if self.positions is None:
            return 0
        if isinstance(self.positions, Span):
            return self.positions.start
        return self.positions[0] if self.positions else 2**62

    def position_mask(self, length: int) -> np.ndarray:
        mask = np.zeros(length, dtype=bool)
        if self.positions is None:
            mask[:] = True
        elif isinstance(self.positions, Span):
            mask[self.positions.start : self.positions.stop] = True
        else:
            inside = [p for p in self.positions if p < length]
            mask[inside] = True
        return mask

    # -- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict:
        value = self.value
        if isinstance(value, PatchSource):
            value = {"file": value.file, "probe": value.probe, "sequence": value.sequence}
        elif isinstance(value, np.ndarray):
            value = {"array": value.tolist(), "dtype": str(value.dtype)}
        elif isinstance(value, tuple):
            value = list(value)
        positions = self.positions
        if isinstance(positions, Span):
            positions = {"start": positions.start, "stop": positions.stop}
        elif positions is not None:
            positions = list(positions)
        units = list(self.units) if self.units is not None else None
        return {"probe": self.probe, "op": self.op, "value": value, "positions": positions, "units": units}

    @classmethod
    def from_dict(cls, d: dict) -> "Intervention":
        unknown = set(d) - {"probe", "op", "value", "positions", "units"}
        if unknown or "probe" not in d:
            raise InterventionError(
                f"an intervention is a JSON object with keys probe, op, value, positions, units; got {sorted(d)}"
            )
        value = d.get("value")
        if isinstance(value, dict):
            if "array" in value:
                value = np.asarray(value["array"], dtype=np.dtype(value.get("dtype", "float32")))
            elif "file" in value:
                value = PatchSource(value["file"], value.get("probe"), int(value.get("sequence", 0)))
            else:
                raise InterventionError(f"unreadable intervention value {value!r}")
        positions = d.get("positions")
        if isinstance(positions, dict):
            positions = Span(int(positions.get("start") or 0), positions.get("stop"))
        return cls(d["probe"], d.get("op", "zero"), value, positions, d.get("units"))


def interventions_to_json(interventions: Iterable[Intervention]) -> str:
    return json.dumps([iv.to_dict() for iv in interventions])


def interventions_from_json(text: str) -> list[Intervention]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InterventionError(f"interventions are not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InterventionError("interventions JSON must be an object or a list of objects")
    return [Intervention.from_dict(d) for d in data]


def save_interventions(path, interventions: Sequence[Intervention]) -> None:
    """Write interventions as a JSON list, atomically (an old file stays whole on any failure)."""
    from .atomic import write_text

    write_text(path, json.dumps([iv.to_dict() for iv in interventions], indent=2), "interventions file",
               InterventionError)


def load_interventions(path) -> list[Intervention]:
    return interventions_from_json(Path(path).read_text())


# -- application ---------------------------------------------------------------------


class BoundIntervention:
    """An intervention checked against a probe's width and a batch's lengths, with its
    values as tensors, ready to apply step by step.  Time-major: masks are [T, B]."""

    def __init__(self, iv: Intervention, width: int, lengths: Sequence[int], dtype, device, source=None):
        self.iv = iv
        self.width = width
        T = max(lengths) if lengths else 0
        if iv.units is not None:
            bad = [u for u in iv.units if not 0 <= u < width]
            if bad:
                raise InterventionError(
                    f"{iv.probe} has {width} units (0..{width - 1}); units {bad} do not exist"
                )
            self.units = torch.tensor(iv.units, dtype=torch.long, device=device)
            n_units = len(iv.units)
            lo = iv.units[0]
            if list(iv.units) == list(range(lo, lo + n_units)):  # a run of units: a view, not a gather
                self.units = slice(lo, lo + n_units)
        else:
            self.units = None
            n_units = width
        mask = np.zeros((T, len(lengths)), dtype=bool)
        for b, L in enumerate(lengths):
            mask[:L, b] = iv.position_mask(L)
        self.mask = torch.from_numpy(mask).to(device)  # [T, B]
        self.steps = np.flatnonzero(mask.any(axis=1))  # steps where anything changes
        self._active = set(self.steps.tolist())
        self._every_row = set(np.flatnonzero(mask.all(axis=1)).tolist())  # steps where all sequences are edited
        self.value = None
        if iv.op in ("set", "add", "scale"):
            v = torch.tensor(iv.value, dtype=dtype, device=device)
            if v.ndim == 1 and v.shape[0] != n_units:
                raise InterventionError(
                    f"{iv.op} on {iv.probe}: value has {v.shape[0]} numbers but {n_units} units are selected"
                )
            self.value = v
        elif iv.op == "patch":
            src = torch.tensor(np.asarray(source), dtype=dtype, device=device)
            if src.ndim == 1:
                src = src.expand(T, -1)
            if src.ndim != 2:
                raise InterventionError(
                    f"patch for {iv.probe}: activations must be [tokens, units], got {tuple(src.shape)}"
                )
            if src.shape[1] not in (n_units, width):
                raise InterventionError(
                    f"patch for {iv.probe}: source has {src.shape[1]} units, the probe has {width}"
                )
            needed = int(self.steps.max()) + 1 if len(self.steps) else 0
            if src.shape[0] < needed:
                raise InterventionError(
                    f"patch for {iv.probe}: source has {src.shape[0]} tokens but step {needed - 1} is patched"
                )
            if src.shape[1] == width and self.units is not None:
                src = src[:, self.units]
            src = src[:T]
            if src.shape[0] < T:  # steps past the source are never selected; pad for shape only
                src = torch.cat([src, src.new_zeros(T - src.shape[0], src.shape[1])])
            self.value = src[:, None, :].expand(T, len(lengths), src.shape[1])  # [T, B, n]

    @property
    def first_step(self) -> int | None:
        return int(self.steps[0]) if len(self.steps) else None

    def active_at(self, t: int) -> bool:
        return t in self._active

    def reversed(self, reverse_index: torch.Tensor) -> "BoundIntervention":
        """The same edit seen by a backward-running direction, whose step p is position
        ``reverse_index[p, b]`` of sequence b."""
        out = object.__new__(BoundIntervention)
        out.__dict__.update(self.__dict__)
        out.mask = torch.gather(self.mask, 0, reverse_index)
        out.steps = np.flatnonzero(out.mask.any(dim=1).cpu().numpy())
        out._active = set(out.steps.tolist())
        out._every_row = set(np.flatnonzero(out.mask.all(dim=1).cpu().numpy()).tolist())
        if self.iv.op == "patch":
            idx = reverse_index[:, :, None].expand_as(self.value)
            out.value = torch.gather(self.value, 0, idx)
        return out

    def _edit(self, x: torch.Tensor, value) -> torch.Tensor:
        op = self.iv.op
        if op == "zero":
            return torch.zeros_like(x)
        if op in ("set", "patch"):
            return (value if value.dtype == x.dtype else value.to(x.dtype)).expand_as(x)
        if op == "add":
            return x + value
        return x * value  # scale

    def _apply(self, x: torch.Tensor, mask: torch.Tensor, value) -> torch.Tensor:
        sel = x if self.units is None else x[..., self.units]
        edited = torch.where(mask[..., None], self._edit(sel, value), sel)
        if self.units is None:
            return edited
        out = x.clone()
        out[..., self.units] = edited
        return out

    def apply_step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Edit ``x`` of shape [B, width] at step ``t``; returns a new tensor."""
        if t not in self._active:
            return x
        value = self.value[t] if self.iv.op == "patch" else self.value
        if t in self._every_row:  # the common case, without masking
            if self.units is None:
                return self._edit(x, value)
            out = x.clone()
            if self.iv.op in ("zero", "set", "patch"):  # the old values are not read: write the new ones
                out[:, self.units] = 0.0 if value is None else value
            else:
                out[:, self.units] = self._edit(x[:, self.units], value)
            return out
        return self._apply(x, self.mask[t], value)

    def apply_all(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Edit ``x`` of shape [T', B, width], holding steps ``start:start+T'``, at once."""
        stop = start + x.shape[0]
        value = self.value[start:stop] if self.iv.op == "patch" else self.value
        return self._apply(x, self.mask[start:stop], value)
