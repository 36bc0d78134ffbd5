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

Every field is checked when an Intervention is built, from Python or from JSON alike
(:meth:`Intervention.from_dict` is the one way in from JSON; the checks live in
:mod:`engine.intervention_fields`): anything unexpected is an :class:`InterventionError` whose
one sentence names the field.  Values must be finite: NaN or infinity in a set/add/scale value or
a patch would silently turn every later state into NaN, and JSON cannot write them.  What only
the model and input can tell (a probe it lacks, units past its width, positions past the input,
a value too large for its dtype, a patch of the wrong shape) is checked when ``engine.run``
binds the interventions, with the same kind of error.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import InterventionError
from .intervention_fields import (MAX_INDEX, MAX_INTERVENTIONS, MAX_JSON_BYTES, array_from_json,
                                  check_probe_name, describe, index, index_list, is_int, is_real, numbers,
                                  patch_array)

OPS = ("zero", "set", "add", "scale", "patch")
KEYS = ("probe", "op", "value", "positions", "units")


@dataclass(frozen=True)
class Span:
    """Positions ``start <= p < stop``; ``stop=None`` runs to the end of the sequence."""

    start: int = 0
    stop: int | None = None

    def __post_init__(self):
        start = index("positions (span start)", self.start)
        stop = None if self.stop is None else index("positions (span stop)", self.stop)
        if stop is not None and stop <= start:
            raise InterventionError(f"positions span [{start}, {stop}) selects nothing: stop must be "
                                    f"greater than start")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)


@dataclass(frozen=True)
class PatchSource:
    """Activations to patch in, read from a saved trace: ``file``'s probe ``probe``
    (default: the intervention's own probe), sequence number ``sequence``."""

    file: str
    probe: str | None = None
    sequence: int = 0

    def __post_init__(self):
        file = self.file
        if isinstance(file, os.PathLike):
            file = os.fspath(file)
        if not isinstance(file, str) or not file:
            raise InterventionError(f"a patch source's file must be the path of a trace file (a string), "
                                    f"got {describe(self.file)}")
        if self.probe is not None:
            check_probe_name(self.probe, "a patch source's probe")
        if not is_int(self.sequence) or not 0 <= int(self.sequence) <= MAX_INDEX:
            raise InterventionError(f"a patch source's sequence must be a whole number >= 0, "
                                    f"got {describe(self.sequence)}")
        object.__setattr__(self, "file", file)
        object.__setattr__(self, "sequence", int(self.sequence))


def _normalise_positions(positions) -> tuple[int, ...] | Span | None:
    if positions is None or isinstance(positions, Span):
        return positions
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise InterventionError("positions given as a slice must have step 1")
        return Span(0 if positions.start is None else positions.start, positions.stop)
    if isinstance(positions, range):
        if positions.step != 1:
            raise InterventionError("positions given as a range must have step 1")
        return Span(positions.start, positions.stop)
    return tuple(sorted(set(index_list("positions", positions))))


def _normalise_units(units) -> tuple[int, ...] | None:
    if units is None:
        return None
    out = index_list("units", units)
    if len(set(out)) != len(out):
        raise InterventionError(f"units lists a unit twice: {describe(list(out))}")
    return out


def _normalise_value(op: str, value):
    if op == "zero":
        if value is None or (is_real(value) and value == 0):
            return None
        raise InterventionError(f"'zero' takes no value, got {describe(value)}")
    if op == "patch":
        if isinstance(value, PatchSource):
            return value
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return patch_array(value)
        if isinstance(value, (str, os.PathLike)):
            return PatchSource(value)
        raise InterventionError(f"'patch' needs a trace file (a PatchSource or a path) or an array of "
                                f"activations as its value, got {describe(value)}")
    if value is None:
        raise InterventionError(f"'{op}' needs a value: one number, or one number per selected unit")
    return numbers(f"the value of '{op}'", value)


@dataclass(frozen=True, eq=False)
class Intervention:
    probe: str
    op: str = "zero"
    value: Any = None
    positions: Any = None
    units: Any = None

    def __post_init__(self):
        check_probe_name(self.probe)
        if not isinstance(self.op, str) or self.op not in OPS:
            raise InterventionError(f"unknown op {describe(self.op)}; use one of {', '.join(OPS)}")
        object.__setattr__(self, "value", _normalise_value(self.op, self.value))
        object.__setattr__(self, "positions", _normalise_positions(self.positions))
        object.__setattr__(self, "units", _normalise_units(self.units))
        if isinstance(self.value, tuple) and self.units is not None and len(self.value) != len(self.units):
            raise InterventionError(f"the value of '{self.op}' has {len(self.value)} numbers but "
                                    f"{len(self.units)} units are selected")

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

    def describe_positions(self) -> str:
        if self.positions is None:
            return "all positions"
        if isinstance(self.positions, Span):
            return f"positions {self.positions.start}:{'' if self.positions.stop is None else self.positions.stop}"
        shown = ", ".join(str(p) for p in self.positions[:5]) + (", …" if len(self.positions) > 5 else "")
        return f"position{'s' if len(self.positions) > 1 else ''} {shown}"

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
    def from_dict(cls, d) -> "Intervention":
        """The one way in from JSON: a parsed JSON object to an Intervention, or an
        :class:`InterventionError` saying which field is wrong (never any other exception)."""
        if not isinstance(d, dict):
            raise InterventionError(f"an intervention is a JSON object with keys {', '.join(KEYS)}; "
                                    f"got {describe(d)}")
        unknown = [k for k in d if k not in KEYS]
        if unknown:
            raise InterventionError(f"unknown key{'s' if len(unknown) > 1 else ''} {describe(unknown)} in an "
                                    f"intervention; its keys are {', '.join(KEYS)}")
        if "probe" not in d:
            raise InterventionError("an intervention needs a 'probe' (e.g. \"layers.0.h\")")
        op = d.get("op", "zero")
        value = _value_from_json(op, d.get("value"))
        positions = d.get("positions")
        if isinstance(positions, dict):
            positions = _span_from_json(positions)
        elif isinstance(positions, (str, float, bool)) or positions is not None and not isinstance(
                positions, (int, list)):
            raise InterventionError(f"positions must be a list of token positions, an object "
                                    f"{{\"start\": .., \"stop\": ..}} or null, got {describe(positions)}")
        units = d.get("units")
        if units is not None and not isinstance(units, (int, list)):
            raise InterventionError(f"units must be a list of unit indices or null, got {describe(units)}")
        return cls(d["probe"], op, value, positions, units)


def _span_from_json(d: dict) -> Span:
    unknown = [k for k in d if k not in ("start", "stop")]
    if unknown:
        raise InterventionError(f"positions as an object takes the keys start and stop, got {describe(unknown)}")
    start = d.get("start")
    return Span(0 if start is None else start, d.get("stop"))


def _value_from_json(op, value):
    """A JSON value to what the Intervention constructor takes: numbers stay, objects become a
    PatchSource or an array (for 'patch' only)."""
    if isinstance(value, str) and op == "patch":
        return PatchSource(value)
    if not isinstance(value, dict):
        if value is not None and not is_real(value) and not isinstance(value, list):
            raise InterventionError(f"the value of an intervention must be a number, a list of numbers or "
                                    f"(for 'patch') an object, got {describe(value)}")
        return value
    if op != "patch":
        raise InterventionError(f"only 'patch' takes an object as its value; {describe(op)} takes a number "
                                f"or a list of numbers")
    if "file" in value:
        unknown = [k for k in value if k not in ("file", "probe", "sequence")]
        if unknown:
            raise InterventionError(f"a patch source takes the keys file, probe, sequence; got {describe(unknown)}")
        sequence = value.get("sequence", 0)
        return PatchSource(value["file"], value.get("probe"), 0 if sequence is None else sequence)
    if "array" in value:
        unknown = [k for k in value if k not in ("array", "dtype")]
        if unknown:
            raise InterventionError(f"a patch array takes the keys array and dtype; got {describe(unknown)}")
        return array_from_json(value["array"], value.get("dtype", "float32"))
    raise InterventionError(f"a patch value is an object with 'file' (a trace file) or 'array' "
                            f"(activations), got {describe(value)}")


def interventions_to_json(interventions: Iterable[Intervention]) -> str:
    return json.dumps([iv.to_dict() for iv in interventions], allow_nan=False)


def interventions_from_json(text: str) -> list[Intervention]:
    """A JSON object or list of objects to interventions; anything else is an InterventionError."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise InterventionError(f"interventions JSON must be text, got {describe(text)}")
    if len(text) > MAX_JSON_BYTES:
        raise InterventionError(f"interventions JSON of {len(text):,} characters is larger than the "
                                f"{MAX_JSON_BYTES // 2**20} MiB allowed")
    try:
        data = json.loads(text)
    except RecursionError:
        raise InterventionError("interventions JSON is nested too deeply to be interventions") from None
    except ValueError as exc:  # JSONDecodeError, an integer of thousands of digits, bad UTF-8 bytes
        raise InterventionError(f"interventions are not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InterventionError(f"interventions JSON must be an object or a list of objects, got {describe(data)}")
    if len(data) > MAX_INTERVENTIONS:
        raise InterventionError(f"{len(data):,} interventions in one document; at most {MAX_INTERVENTIONS:,}")
    out = []
    for k, d in enumerate(data):
        try:
            out.append(Intervention.from_dict(d))
        except InterventionError as exc:
            if len(data) == 1:
                raise
            raise InterventionError(f"intervention {k + 1} of {len(data)}: {exc}") from None
    return out


def save_interventions(path, interventions: Sequence[Intervention]) -> None:
    """Write interventions as a JSON list, atomically (an old file stays whole on any failure)."""
    from .atomic import write_text

    write_text(path, json.dumps([iv.to_dict() for iv in interventions], indent=2), "interventions file",
               InterventionError)


def load_interventions(path) -> list[Intervention]:
    """Read an interventions JSON file; every failure is an InterventionError naming the file."""
    from .errors import LoadError
    from .limits import read_text_capped

    path = Path(path)
    try:  # only a regular file, of sane size, as UTF-8 (engine.limits)
        text = read_text_capped(path, "interventions file", MAX_JSON_BYTES)
    except LoadError as exc:
        raise InterventionError(str(exc)) from None
    try:
        return interventions_from_json(text)
    except InterventionError as exc:
        raise InterventionError(f"{path}: {exc}") from None


def check_against_width(iv: Intervention, width: int, source=None) -> None:
    """Refuse, in words, an intervention whose units, value or patch source do not fit a probe
    ``width`` units wide (before a bidirectional layer splits it per direction)."""
    if iv.units is not None:
        bad = [u for u in iv.units if not 0 <= u < width]
        if bad:
            raise InterventionError(f"{iv.probe} has {width} units (0..{width - 1}); "
                                    f"units {describe(bad)} do not exist")
    n_units = width if iv.units is None else len(iv.units)
    if isinstance(iv.value, tuple) and len(iv.value) != n_units:
        raise InterventionError(f"{iv.op} on {iv.probe}: value has {len(iv.value)} numbers but {n_units} "
                                f"units are selected")
    if source is not None:
        shape = np.shape(source)
        if len(shape) not in (1, 2) or shape[-1] not in (n_units, width):
            raise InterventionError(f"patch for {iv.probe}: the source's activations are shaped {tuple(shape)}; "
                                    f"expected [tokens, {n_units}]" + (f" or [tokens, {width}]" if n_units != width else ""))


# -- application ---------------------------------------------------------------------


class BoundIntervention:
    """An intervention checked against a probe's width and a batch's lengths, with its
    values as tensors, ready to apply step by step.  Time-major: masks are [T, B]."""

    def __init__(self, iv: Intervention, width: int, lengths: Sequence[int], dtype, device, source=None):
        self.iv = iv
        self.width = width
        T = max(lengths) if lengths else 0
        check_against_width(iv, width)
        if iv.units is not None:
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
        if not len(self.steps):
            longest = max(lengths) if lengths else 0
            raise InterventionError(
                f"{iv.op} on {iv.probe} at {iv.describe_positions()} would change nothing: the input "
                f"{'is' if len(lengths) == 1 else 'sequences are at most'} {longest} tokens long")
        self._active = set(self.steps.tolist())
        self._every_row = set(np.flatnonzero(mask.all(axis=1)).tolist())  # steps where all sequences are edited
        self.value = None
        if iv.op in ("set", "add", "scale"):
            v = torch.tensor(iv.value, dtype=dtype, device=device)
            if not bool(torch.isfinite(v).all()):
                raise InterventionError(
                    f"{iv.op} on {iv.probe}: the value {describe(iv.value)} is too large for this model's "
                    f"{str(dtype).replace('torch.', '')} numbers")
            self.value = v
        elif iv.op == "patch":
            source = np.asarray(source)
            if source.dtype.kind not in "iuf":
                raise InterventionError(f"patch for {iv.probe}: the source's activations are not numbers "
                                        f"({source.dtype})")
            with np.errstate(over="ignore", invalid="ignore"):
                src = torch.tensor(source, dtype=dtype, device=device)
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
            if not bool(torch.isfinite(src[self.mask.any(dim=1)[: src.shape[0]]]).all()):
                raise InterventionError(
                    f"patch for {iv.probe}: the source's activations hold NaN or infinity at the patched steps")
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

    def columns(self, cols: list[int]) -> "BoundIntervention":
        """The same edit for the sequences ``cols`` of the batch alone."""
        out = object.__new__(BoundIntervention)
        out.__dict__.update(self.__dict__)
        out.mask = self.mask[:, cols]
        out.steps = np.flatnonzero(out.mask.any(dim=1).cpu().numpy())
        out._active = set(out.steps.tolist())
        out._every_row = set(np.flatnonzero(out.mask.all(dim=1).cpu().numpy()).tolist())
        if self.iv.op == "patch":
            out.value = self.value[:, cols]
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
