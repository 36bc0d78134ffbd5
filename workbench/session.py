"""The document: model, input, interventions, selection and the current traces.

Views observe a :class:`Session` through its signals and send edits back through its methods;
they never call each other.  Anything slow (loading a checkpoint, running the model) goes to
the :class:`~workbench.runner.Runner`; the newest request wins.

Every run produces two traces: ``clean_trace`` (no interventions) and ``trace`` (with them; the
same object when there are none), each re-run from its own prefix cache, so an edited
intervention costs only the steps after the first one it changes.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

import engine
from engine.atomic import write_text
from engine.budget import RunTooLarge, estimate_run_bytes
from engine.errors import InputError, InterventionError, SeqScopeError
from engine.interventions import Intervention, check_against_width

from .examples import LookAt, look_at
from .project import PROJECT_FORMAT, Project, parse_project, read_project
from .runner import Runner


@dataclass(frozen=True)
class RunResult:
    clean: engine.Trace
    steered: engine.Trace
    request: int


@dataclass(frozen=True)
class ProjectLoaded:
    """A checked project and the model it names (None: keep the current model)."""

    project: Project
    model: object


def token_ids_from_text(text: str):
    """Whitespace- or comma-separated token ids, as an int64 array; an :class:`InputError`
    (returned, not raised) saying what is wrong otherwise."""
    parts = text.replace(",", " ").split()
    if not parts:
        return InputError("this model came without a vocabulary: type token ids (e.g. 12 7 31), "
                          "or open a .npy file of them")
    ids = []
    for p in parts:
        try:
            ids.append(int(p))
        except ValueError:
            return InputError(f"this model came without a vocabulary, so the input is read as token ids; "
                              f"{p!r} is not one (type numbers such as 12 7 31)")
    return np.array(ids, dtype=np.int64)


class Session(QObject):
    model_changed = Signal()
    trace_changed = Signal()
    selection_changed = Signal()
    interventions_changed = Signal()
    input_changed = Signal()
    error = Signal(str)
    project_restored = Signal(dict)
    busy_changed = Signal(bool)
    progress = Signal(int, int)
    computing_changed = Signal()  # a run started, progressed or ended (see ``computing``)
    corpus_changed = Signal()  # a corpus trace was opened (``corpus``)
    span_changed = Signal()  # a span of steps was selected in the text (``span``)
    corpus_match_requested = Signal()  # "match this span in the corpus" was asked for

    def __init__(self, runner: Runner | None = None, parent=None):
        super().__init__(parent)
        self.runner = runner or Runner(self)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.progress.connect(self._on_progress)
        self.runner.busy_changed.connect(self.busy_changed)
        self.runner.busy_changed.connect(lambda busy: busy or self._set_computing(False))
        self.model = None
        self.model_path: str | None = None
        #: how the model was loaded when not the default: {"config": {...}, "strict": False}
        self.model_load: dict = {}
        self.text: str | None = None  # the input, for token models
        self.values: np.ndarray | None = None  # the input, for numeric models
        self.interventions: list[Intervention] = []
        self.probe: str | None = None
        self.units: list[int] = []  # selected units; the first is "the" unit
        self.pinned: list[tuple[str, int]] = []
        self.step: int = 0
        #: the current model's look-at entry (what its card says to look at), or None
        self.look_at: LookAt | None = None
        self._choose_unit = False  # on the next trace, select the unit that varies most
        self._first_step: int | None = None  # on the next trace, put the cursor here
        self.trace: engine.Trace | None = None
        self.clean_trace: engine.Trace | None = None
        self._clean_cache = engine.PrefixCache()
        self._steered_cache = engine.PrefixCache()
        #: above this many bytes of recorded arrays a run records only what the views need now
        self.capture_budget_bytes = 600 * 2**20
        self._run_count = 0
        self._clean_input = None  # the input clean_trace was computed from
        self._pending_input = None
        self.computing = False  # a run of the model is under way
        self.run_progress = (0, 0)  # (done, total) of that run, as engine.run reports it
        self._loading = "Could not open the model"  # what the pending "load" job is, for its error
        self.corpus: str | None = None  # the open corpus trace (File > Open corpus trace)
        self.span: tuple[int, int] | None = None  # selected steps a:b of the input
        #: the recurrent state every run starts from (None: zeros), and what it is in words
        self.initial_state: dict | None = None
        self.initial_state_source: str | None = None

    # -- model --------------------------------------------------------------------------
    def open_model(self, path, config=None, strict: bool = True):
        """Load a checkpoint off the GUI thread; on failure the current model stays. ``strict``:
        as :func:`engine.load` (False leaves out tensors the model does not use, and says so)."""
        path = str(path)

        def job(should_stop, progress):
            return path, engine.load(path, config=config, device="cpu", strict=strict), {"config": config,
                                                                                          "strict": strict}

        self._loading = "Could not open the model"
        self.runner.submit("load", job)

    def set_model(self, model, path: str | None = None, how: dict | None = None):
        """Use an already built model (also the end of ``open_model``).

        What it opens on: a probe or units chosen while no model was open (the command line's
        ``--probe``/``--unit``, a project) win; otherwise the model's look-at entry (see
        :mod:`workbench.examples`); otherwise its first layer's main state and, once the first
        trace is in, the unit that varies most over the input.  ``how``: the ``config`` and
        ``strict`` it was loaded with (a project keeps them, to load it the same way)."""
        requested = self.model is None and (self.probe is not None or bool(self.units))
        self.model = model
        self.model_path = path
        self.model_load = {k: v for k, v in (how or {}).items() if v is not None and v is not True}
        self._clean_cache = engine.PrefixCache()
        self._steered_cache = engine.PrefixCache()
        self.trace = self.clean_trace = None
        self._clean_input = None
        self.initial_state = self.initial_state_source = None  # the last model's state
        self.interventions = [iv for iv in self.interventions if iv.probe in self.probe_names()]
        self._select_first_view(model, path, requested)
        ids = self.values is not None and self.values.ndim == 1 and np.issubdtype(self.values.dtype, np.integer)
        if not model.takes_tokens:
            self.text = None
        elif self.values is not None and not (ids and getattr(model, "tokenizer", None) is None):
            self.values = None  # token ids stay for a model that reads ids (one without a vocabulary)
        self.model_changed.emit()
        self.interventions_changed.emit()
        self.selection_changed.emit()
        self.request_run()

    def _select_first_view(self, model, path, requested: bool):
        names = self.probe_names()
        look = None if requested else look_at(path)
        self.look_at = look if look is not None and look.probe in names else None
        self._first_step = None
        if self.look_at is not None:
            self.probe = self.look_at.probe
            self.units = list(self.look_at.units)
            self._first_step = self.look_at.step
        elif not requested or self.probe not in names:
            self.probe = _default_probe(model)
            if not requested:
                self.units = []
        width = self.probe_width()
        self.units = [u for u in self.units if u < width]
        self._choose_unit = not self.units
        self.units = self.units or [0]  # until the first trace says which unit varies most

    def probe_names(self) -> list[str]:
        return [s.name for s in self.model.probe_specs()] if self.model is not None else []

    def spec(self, name: str | None = None):
        name = name or self.probe
        for s in self.model.probe_specs() if self.model is not None else []:
            if s.name == name:
                return s
        return None

    def probe_width(self, name: str | None = None) -> int:
        spec = self.spec(name)
        return spec.width if spec is not None else 0

    # -- corpus ---------------------------------------------------------------------------
    def open_corpus(self, path, with_model: bool = True):
        """Use the corpus trace at ``path`` (checked now; a bad file changes nothing and says
        why); with ``with_model``, its model is opened too when it was recorded from a file that
        exists and is not the open one."""
        from engine.corpus.reader import CorpusReader

        try:
            with CorpusReader(path) as reader:
                source = str(reader.model_info().get("source") or "")
        except SeqScopeError as exc:
            self.error.emit(f"Could not open the corpus: {exc}")
            return
        self.corpus = str(path)
        self.corpus_changed.emit()
        if with_model and source and Path(source).exists() and (self.model_path is None or
                                                  Path(source).resolve() != Path(self.model_path).resolve()):
            self.open_model(source)

    def open_sequence(self, step: int, text: str | None = None, values=None):
        """Run a corpus sequence (its text, or numeric values) through the normal run path, with
        the cursor at ``step`` once its trace is in."""
        self._first_step = int(step)
        self.set_values(values) if text is None else self.set_text(text)

    def set_span(self, span):
        """Select steps ``a:b`` of the input (None: no span)."""
        span = None if span is None else (int(span[0]), int(span[1]))
        if span != self.span:
            self.span = span
            self.span_changed.emit()

    # -- input ----------------------------------------------------------------------------
    def set_text(self, text: str):
        self.text = text
        self.values = None
        self.set_span(None)
        self.input_changed.emit()
        self.request_run()

    def set_values(self, values: np.ndarray):
        values = np.asarray(values)
        # token ids stay integers (a model without a vocabulary reads them); the rest is float32
        self.values = values if np.issubdtype(values.dtype, np.integer) else values.astype(np.float32)
        self.text = None
        self.set_span(None)
        self.input_changed.emit()
        self.request_run()

    def current_input(self):
        """What the model runs on: the text, or the numeric array; for a model that reads tokens
        but came without a vocabulary (an RWKV-7 ``.pth``, say), the text read as token ids."""
        if self.text is not None and self.model is not None and self.model.takes_tokens \
                and self.model.tokenizer is None:
            return token_ids_from_text(self.text)
        return self.text if self.text is not None else self.values

    # -- interventions ---------------------------------------------------------------------
    def check_interventions(self, interventions) -> None:
        """Refuse (InterventionError) interventions the current model cannot take: a probe it
        does not have, units it lacks, a value of the wrong length."""
        if self.model is None:
            return
        for iv in interventions:
            spec = self.spec(iv.probe)
            if spec is None:
                raise InterventionError(f"this model has no probe {iv.probe!r}")
            check_against_width(iv, int(np.prod(spec.shape)))  # units index the flattened probe

    def set_interventions(self, interventions):
        """Use these interventions and re-run; if one does not fit the model, raise
        InterventionError and keep the current ones."""
        interventions = list(interventions)
        self.check_interventions(interventions)
        self.interventions = interventions
        self.interventions_changed.emit()
        self.request_run()

    def add_intervention(self, iv: Intervention):
        self.set_interventions(self.interventions + [iv])

    def replace_intervention(self, index: int, iv: Intervention):
        ivs = list(self.interventions)
        ivs[index] = iv
        self.set_interventions(ivs)

    def remove_intervention(self, index: int):
        ivs = list(self.interventions)
        del ivs[index]
        self.set_interventions(ivs)

    # -- selection (no re-run) ----------------------------------------------------------------
    def select_probe(self, name: str):
        if name not in self.probe_names():
            self.error.emit(f"no probe {name!r} in this model")
            return
        self.probe = name
        width = self.probe_width()
        self.units = [u for u in self.units if u < width] or [0]
        self.selection_changed.emit()
        if self.trace is not None and name not in self.trace.arrays:
            self.request_run()  # a long input recorded only some probes: record this one too

    def capture_probes(self, n_tokens: int):
        """What a run records: everything, unless that would take more than
        ``capture_budget_bytes`` for this input; then the selected probe, each layer's output and
        state (which the prefix cache needs), and the logits."""
        specs = self.model.probe_specs()
        everything = estimate_run_bytes(self.model, n_tokens, "*").arrays * 2  # clean + steered
        if everything <= self.capture_budget_bytes:
            return "*"
        keep = {self.probe, "logits"} | {iv.probe for iv in self.interventions}
        keep |= {s.name for s in specs if s.site in ("h", "c", "out", "state") and s.name.startswith("layers.")
                 and int(np.prod(s.shape)) <= 4096}
        return [s.name for s in specs if s.name in keep]

    def select_units(self, units):
        units = [int(u) for u in units]
        if units and units != self.units:
            self.units = units
            self.selection_changed.emit()

    def select_unit(self, unit: int):
        self.select_units([unit] + [u for u in self.units if u != unit][:7])

    def set_step(self, step: int):
        n = self.trace.n_tokens if self.trace is not None else 0
        step = max(0, min(int(step), max(0, n - 1)))
        if step != self.step:
            self.step = step
            self.selection_changed.emit()

    def pin(self, probe: str, unit: int):
        if (probe, unit) not in self.pinned:
            self.pinned.append((probe, unit))
            self.selection_changed.emit()

    def unpin(self, probe: str, unit: int):
        if (probe, unit) in self.pinned:
            self.pinned.remove((probe, unit))
            self.selection_changed.emit()

    # -- running --------------------------------------------------------------------------
    def request_run(self):
        """Run the model on the current input with the current interventions (newest wins)."""
        model, inp = self.model, self.current_input()
        if model is None or inp is None:
            return
        if isinstance(inp, str) and not inp:
            self.error.emit("the input is empty: type or open some text")
            return
        if isinstance(inp, InputError):
            self.error.emit(str(inp))
            return
        ivs, start = tuple(self.interventions), self.initial_state
        n_tokens = len(inp) if isinstance(inp, str) else inp.shape[0]  # characters: an upper bound on tokens
        probes = self.capture_probes(n_tokens)
        clean_cache, steered_cache = self._clean_cache, self._steered_cache
        self._run_count += 1
        request = self._run_count
        # an edit of the interventions alone keeps the clean trace (the same object: views key on it)
        same_input = (self.clean_trace is not None and _same_input(self._clean_input, inp)
                      and (probes == "*" or set(probes) <= set(self.clean_trace.arrays)))
        previous_clean = self.clean_trace if same_input else None
        self._pending_input = inp

        def job(should_stop, progress):
            try:
                clean = previous_clean
                if clean is None:
                    clean = engine.run(model, inp, probes, cache=clean_cache, progress=progress,
                                       should_stop=should_stop, initial_state=start)
                steered = clean
                if ivs:
                    steered = engine.run(model, inp, probes, interventions=ivs, cache=steered_cache,
                                         progress=progress, should_stop=should_stop, initial_state=start)
            except RunTooLarge as exc:  # the window has no budget to raise: say what fits
                raise InputError(exc.explain("")) from None
            return RunResult(clean, steered, request)

        self.runner.submit("run", job)
        self._set_computing(True)

    def set_initial_state(self, state: dict | None, source: str | None = None):
        """Start this and every later run from ``state`` ({probe name: array}, checked against
        the model now: a refusal raises and changes nothing; ``source`` says what it is), or
        from zeros (None).  A new model starts from zeros again."""
        if state is not None:
            from engine.initial_state_files import check_fits

            check_fits(self.model, state, 1, source or "the state")
        self.initial_state, self.initial_state_source = state, source if state is not None else None
        self._clean_input = None  # the clean trace ran from the other state
        self.request_run()

    def _set_computing(self, computing: bool, progress=(0, 0)):
        if computing != self.computing or progress != self.run_progress:
            self.computing, self.run_progress = computing, progress
            self.computing_changed.emit()

    def _on_progress(self, _id, kind, done, total):
        if kind == "run":
            self._set_computing(True, (int(done), int(total)))
        self.progress.emit(done, total)

    def _on_finished(self, _id, kind, result):
        if kind == "load" and isinstance(result, ProjectLoaded):
            self.apply_project(result.project, result.model)
            self.project_restored.emit(result.project.data)
        elif kind == "load":
            path, model, how = result
            self.set_model(model, path, how)
        elif kind == "run":
            self.clean_trace, self.trace = result.clean, result.steered
            self._clean_input = self._pending_input
            if self._choose_unit and self.probe in self.clean_trace.arrays:
                self._choose_unit = False
                self.units = [most_varying_unit(self.clean_trace[self.probe])]
            if self._first_step is not None:
                self.step, self._first_step = self._first_step, None
            if self.step >= self.trace.n_tokens:
                self.step = max(0, self.trace.n_tokens - 1)
            self.computing = False  # views redraw from the trace: no separate signal needed
            self.trace_changed.emit()

    def trace_notes(self) -> list[str]:
        """What the current traces say about their runs (e.g. where non-finite values first
        appear), each sentence once; the status bar shows them."""
        notes = []
        for t in (self.clean_trace, self.trace):
            for note in (t.notes if t is not None else ()):
                if note not in notes:
                    notes.append(note)
        return notes

    def _on_failed(self, _id, kind, message):
        if kind == "run":
            self._set_computing(False)
        what = {"load": self._loading, "run": "Could not run the model",
                "export": "Could not export the trace"}.get(kind, "Something failed")
        self.error.emit(f"{what}: {message}")

    # -- project files ---------------------------------------------------------------------
    def to_project(self) -> dict:
        return {
            "format": PROJECT_FORMAT, "version": 1,
            "model": self.model_path,
            **({"model_config": self.model_load["config"]} if "config" in self.model_load else {}),
            **({"model_strict": False} if self.model_load.get("strict") is False else {}),
            "text": self.text,
            "values": None if self.values is None else self.values.tolist(),
            "interventions": [iv.to_dict() for iv in self.interventions],
            "probe": self.probe, "units": self.units, "step": self.step,
            "pinned": [list(p) for p in self.pinned],
            **({} if self.initial_state is None else {  # one sequence: each state is [width] (or [1, width])
                "initial_state": {k: np.asarray(v).reshape(-1).tolist() for k, v in self.initial_state.items()},
                "initial_state_source": self.initial_state_source}),
        }

    def save_project(self, path, layout: str | None = None):
        data = self.to_project()
        if layout is not None:
            data["layout"] = layout
        write_text(path, json.dumps(data, indent=1), "project")  # atomically: an old project stays whole

    @staticmethod
    def read_project(path) -> Project:
        """Read and check a project file (a ProjectError, a SeqScopeError, if anything is wrong)."""
        return read_project(path)

    def open_project(self, path) -> bool:
        """Read and check a project file now, load its model off the GUI thread, check the
        interventions against that model, and only then restore it.  A bad file or a model that
        does not open changes nothing: the error signal says why."""
        try:
            project = read_project(path)
        except SeqScopeError as exc:
            self.error.emit(f"Could not open the project: {exc}")
            return False
        current = self.model

        def job(should_stop, progress):
            model = engine.load(project.model, device="cpu", config=project.model_config,
                                strict=project.model_strict) if project.model else None
            project.check_fits(model if model is not None else current)
            return ProjectLoaded(project, model)

        self._loading = f"Could not open the project {Path(path).name}"
        self.runner.submit("load", job)
        return True

    def apply_project(self, project, model=None):
        """Restore a checked project (a dict is checked first); ``model`` is the loaded model
        of ``project.model``, or None to keep the current one."""
        if isinstance(project, dict):
            project = parse_project(project)
        self.interventions = list(project.interventions)
        self.pinned = list(project.pinned)
        if project.text is not None:
            self.text, self.values = project.text, None
        elif project.values is not None:
            self.text, self.values = None, project.values
        self.probe = project.probe
        self.units = list(project.units)
        self.step = project.step
        self.input_changed.emit()
        if model is not None:
            self.set_model(model, project.model, {"config": project.model_config, "strict": project.model_strict})
        elif self.model is not None:
            self.set_model(self.model, self.model_path, self.model_load)
        if project.initial_state is not None and self.model is not None:  # checked by project.check_fits
            self.set_initial_state(project.initial_state, project.initial_state_source or "the project's state")


def _default_probe(model) -> str:
    """The probe a model without a look-at entry opens on: its first layer's main state (the
    hidden state ``h``, or the layer's output for the families that name it ``out``), else the
    first one-dimensional probe of the first layer."""
    specs = model.probe_specs()
    names = [s.name for s in specs]
    for site in ("h", "out", "y"):
        if f"layers.0.{site}" in names:
            return f"layers.0.{site}"
    first = [s.name for s in specs if s.layer == 0 and len(s.shape) == 1]
    return first[0] if first else names[0]


def most_varying_unit(values: np.ndarray) -> int:
    """The unit (column, after flattening all but the step axis) whose values vary most over the
    steps; non-finite values are left out.  A constant unit is chosen only when all are."""
    a = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    a = np.where(np.isfinite(a), a, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN unit: nanvar says so, and warns
        var = np.nanvar(a, axis=0)
    return int(np.argmax(np.nan_to_num(var, nan=-1.0)))


def _same_input(a, b) -> bool:
    if a is None or b is None or type(a) is not type(b):
        return False
    if isinstance(a, str):
        return a == b
    return a.shape == b.shape and bool(np.array_equal(a, b))
