"""Project files: reading one and checking every field before anything in the session changes.

A project is a JSON object (``"format": "seqscope-project"``, ``"version": 1``) holding the model's
path, the input (text or numbers), the interventions, the selection and the window layout.
:func:`read_project` returns a :class:`Project` whose fields are all of the right type, or raises
a :class:`ProjectError` whose message names the file and the field; :meth:`Project.check_fits`
then checks the interventions against the model the project opens.  Only after both does the
session replace its state, so a bad project changes nothing.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import safe_json
from engine.errors import InterventionError, LoadError, SeqScopeError
from engine.intervention_fields import describe
from engine.interventions import Intervention, check_against_width
from engine.limits import read_text_capped

PROJECT_FORMAT = "seqscope-project"
PROJECT_VERSION = 1
KEYS = ("format", "version", "model", "model_config", "model_strict", "text", "values", "interventions", "probe", "units", "step", "pinned",
        "layout", "initial_state", "initial_state_source")
MAX_PROJECT_BYTES = 256 * 2**20
MAX_INDEX = 2**40


class ProjectError(SeqScopeError):
    """A project file that cannot be opened, with the reason in words."""


@dataclass(frozen=True)
class Project:
    model: str | None = None
    model_config: dict | None = None  # engine.load(model, config=...), when the model needed one
    model_strict: bool = True  # False: loaded with strict=False
    text: str | None = None
    values: np.ndarray | None = None
    interventions: tuple[Intervention, ...] = ()
    probe: str | None = None
    units: tuple[int, ...] = (0,)
    step: int = 0
    pinned: tuple[tuple[str, int], ...] = ()
    layout: bytes | None = None
    initial_state: dict | None = None  # {probe name: [width]} every run starts from (None: zeros)
    initial_state_source: str | None = None
    data: dict = field(default_factory=dict)  # the file's JSON, as read

    def check_fits(self, model) -> None:
        """Refuse interventions that name a probe ``model`` does not have or units it lacks."""
        if model is None:
            return
        specs = {s.name: s for s in model.probe_specs()}
        for k, iv in enumerate(self.interventions):
            spec = specs.get(iv.probe)
            try:
                if spec is None:
                    raise InterventionError(f"names probe {iv.probe!r}, which this {model.architecture} model "
                                            f"does not have")
                check_against_width(iv, int(np.prod(spec.shape)))  # units index the flattened probe
            except InterventionError as exc:
                raise ProjectError(f"the project's intervention {k + 1} does not fit its model: {exc}") from None
        if self.initial_state is not None:
            from engine.initial_state_files import check_fits

            try:
                check_fits(model, self.initial_state, 1, "the project's initial state")
            except SeqScopeError as exc:
                raise ProjectError(str(exc)) from None


def read_project(path) -> Project:
    """Read and check a project file; any problem is a ProjectError naming the file."""
    path = Path(path)
    try:  # only a regular file, of sane size, as UTF-8, nested no deeper than engine.safe_json allows
        data = safe_json.loads(read_text_capped(path, "project file", MAX_PROJECT_BYTES), f"project file {path}")
    except LoadError as exc:
        raise ProjectError(str(exc)) from None
    try:
        return parse_project(data)
    except ProjectError as exc:
        raise ProjectError(f"{path}: {exc}") from None


def parse_project(data) -> Project:
    """A project's parsed JSON to a checked :class:`Project`."""
    if not isinstance(data, dict) or data.get("format") != PROJECT_FORMAT:
        raise ProjectError("not a SeqScope project file (no \"format\": \"seqscope-project\")")
    version = data.get("version", PROJECT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProjectError(f"its version should be a whole number, found {describe(version)}")
    if version > PROJECT_VERSION:
        raise ProjectError(f"it was saved by a newer SeqScope (project version {version}; this one reads "
                           f"{PROJECT_VERSION}): upgrade SeqScope")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ProjectError(f"unknown field{'s' if len(unknown) > 1 else ''} {describe(unknown)}; a project has "
                           f"{', '.join(KEYS)}")
    model = _optional(data, "model", str, "a path")
    if model is not None and (not model or "\x00" in model):
        raise ProjectError(f"its model path {describe(model)} is not a path")
    model_config = _optional(data, "model_config", dict, "a model config (a JSON object)")
    model_strict = data.get("model_strict", True)
    if not isinstance(model_strict, bool):
        raise ProjectError(f"its model_strict should be true or false, found {describe(model_strict)}")
    text = _optional(data, "text", str, "text")
    values = _values(data.get("values"))
    interventions = _interventions(data.get("interventions"))
    probe = _optional(data, "probe", str, "a probe name")
    units = data.get("units")
    if units is None:
        units = [0]
    if not isinstance(units, list) or not units or not all(_is_index(u) for u in units):
        raise ProjectError(f"its units should be a list of unit numbers, found {describe(units)}")
    step = data.get("step")
    step = 0 if step is None else step
    if not _is_index(step):
        raise ProjectError(f"its step should be a whole number >= 0, found {describe(step)}")
    pinned = data.get("pinned") or []
    if not isinstance(pinned, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _is_index(p[1]) for p in pinned):
        raise ProjectError(f"its pinned units should be [probe, unit] pairs, found {describe(pinned)}")
    layout = _layout(data.get("layout"))
    initial_state = _initial_state(data.get("initial_state"))
    source = _optional(data, "initial_state_source", str, "text")
    return Project(model=model, model_config=model_config, model_strict=model_strict, text=text, values=values, interventions=interventions, probe=probe,
                   units=tuple(units), step=step, pinned=tuple((p, u) for p, u in pinned), layout=layout,
                   initial_state=initial_state, initial_state_source=source, data=data)


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INDEX


def _optional(data: dict, key: str, kind, words: str):
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise ProjectError(f"its {key} should be {words}, found {describe(value)}")
    return value


def _values(values) -> np.ndarray | None:
    """A numeric input: a list of numbers (token ids) or of rows of numbers ([time, features])."""
    if values is None:
        return None
    bad = ProjectError(f"its values should be a list of numbers or of equal rows of numbers, found "
                       f"{describe(values)}")
    if not isinstance(values, list) or not values:
        raise bad
    rows = values if all(isinstance(v, list) for v in values) else [values]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for row in rows for v in row):
        raise bad
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        raise bad from None
    if arr.ndim not in (1, 2) or arr.dtype.kind not in "iuf":
        raise bad
    if arr.dtype.kind in "iu":
        if arr.ndim == 1:
            return arr.astype(np.int64)  # token ids for a model without a vocabulary
        arr = arr.astype(np.float64)
    return arr.astype(np.float32)


def _interventions(items) -> tuple[Intervention, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ProjectError(f"its interventions should be a list, found {describe(items)}")
    out = []
    for k, d in enumerate(items):
        try:
            out.append(Intervention.from_dict(d))
        except InterventionError as exc:
            raise ProjectError(f"intervention {k + 1}: {exc}") from None
    return tuple(out)


def _initial_state(state) -> dict | None:
    """``{probe name: [numbers]}``, the state the project's runs start from (checked against the
    model by :meth:`Project.check_fits`)."""
    if state is None:
        return None
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in state.values()):
        raise ProjectError(f"its initial_state should map probe names to lists of numbers, found {describe(state)}")
    return {str(k): np.asarray(v, dtype=np.float64) for k, v in state.items()}


def _layout(layout) -> bytes | None:
    if layout is None:
        return None
    if not isinstance(layout, str):
        raise ProjectError(f"its layout should be base64 text, found {describe(layout)}")
    try:
        return base64.b64decode(layout, validate=True)
    except (binascii.Error, ValueError):
        raise ProjectError("its window layout is not valid base64") from None


__all__ = ["Project", "ProjectError", "read_project", "parse_project", "PROJECT_FORMAT", "PROJECT_VERSION"]
