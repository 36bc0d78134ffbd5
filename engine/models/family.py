"""What the chunked families (Mamba, Mamba2, RWKV-4/7, minGRU, RecurrentGemma, xLSTM, GLA/RetNet,
DeltaNet, HGRN, LRU) share besides the forward pass of :mod:`engine.models.chunked`: the
model's housekeeping (:class:`FamilyModel`, :class:`ScannedFamilyModel`), its probe table
(:func:`probe_table`), its config's (:class:`FamilyConfig`), and what their loaders do alike
(:func:`names_under`, :func:`check_loaded_weights`, :func:`build_model`).  Written once so that
every family says the same thing the same way.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, replace

import torch

from ..errors import LoadError
from ..limits import check_declared_layers
from ..probes import ProbeSpec, layer_probe
from .chunked import ChunkedLayerModel

#: the scans a model with a compiled CPU loop can be asked for
SCANS = ("auto", "numba", "torch")


@functools.cache
def numba_available() -> bool:
    """Whether the compiled CPU loops (:mod:`engine.models.numba_kernels`) can run: numba is a
    dependency, but a broken install (a numba built for another numpy, a missing llvmlite) must
    only cost speed, so any failure to import them means the torch loops run instead."""
    try:
        from . import numba_kernels  # noqa: F401
    except Exception:  # noqa: BLE001 - whatever breaks numba's import, the torch path still works
        return False
    return True


def run_parallel_numba(kernel, threads: int, *args) -> None:
    """Call a numba ``parallel=True`` kernel on ``threads`` threads without touching torch's.

    numba's OpenMP threading layer sets the calling thread's OpenMP thread count when it starts
    and when its thread count is set, and torch reads the same setting: after a Mamba scan the
    caller's torch ran on all cores, and its later matmuls rounded differently from a run on
    one thread (a workbench test comparing a worker-thread run with a main-thread run caught
    it).  The caller's torch setting is put back after the call."""
    import numba

    before = torch.get_num_threads()
    try:
        numba.set_num_threads(threads)
        kernel(*args)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def require_weights(expected: dict[str, tuple[int, ...]], weights: dict) -> None:
    """A ValueError unless ``weights`` holds every tensor of ``expected`` (name -> shape) with
    that shape: a model is only ever built from weights that fit its config."""
    missing = [k for k in expected if k not in weights]
    if missing:
        raise ValueError(f"weights missing for this config: {missing}")
    bad = [f"{k}: expected {expected[k]}, got {tuple(weights[k].shape)}" for k in expected
           if tuple(weights[k].shape) != expected[k]]
    if bad:
        raise ValueError("weight shapes do not match the config: " + "; ".join(bad))


class FamilyModel(ChunkedLayerModel):
    """A chunked model built from a config and its canonical weights.  A subclass gives
    ``weight_shapes(config)`` (name -> shape of every weight) and ``_prepare()`` (the tensors it
    derives from the weights); this class checks the weights, keeps them in the model's dtype and
    device (``_w``), re-derives them on :meth:`to`, and answers the questions every model answers
    (sizes, ``info``, ``state_dict``, ``cache_key``).

    The sizes read ``config.vocab_size``, ``config.d_model`` and ``config.n_layer``; a family whose
    config names them otherwise overrides the properties."""

    @staticmethod
    def weight_shapes(config) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _prepare(self):
        """Tensors derived from the weights (after loading and after :meth:`to`)."""

    def __init__(self, config, weights: dict, *, tokenizer=None, source: str = "", dtype=torch.float32,
                 device="cpu", attention_window=None):
        from .mamba import AttentionWindow

        expected = self.weight_shapes(config)
        require_weights(expected, weights)
        self.config = config
        self.tokenizer = tokenizer
        self.source = str(source)
        self.load_info: dict = {}
        self.dtype = dtype
        self.device = torch.device(device)
        self._w = {k: weights[k].detach().to(dtype=dtype, device=self.device) for k in expected}
        self.parameter_count = int(sum(v.numel() for v in self._w.values()))
        self._window = AttentionWindow()
        if attention_window is not None:
            self.attention_window = attention_window
        self._prepare()
        self._specs = self._build_specs()

    def to(self, device=None, dtype=None):
        """Moves the weights in place (and returns the model)."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        self._w = {k: v.to(device=self.device, dtype=self.dtype) for k, v in self._w.items()}
        self._prepare()
        return self

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def input_size(self) -> int:
        return self.config.d_model

    @property
    def num_layers(self) -> int:
        return self.config.n_layer

    def _settings(self) -> dict:
        """The settings besides the weights that change what a run computes, for :meth:`info`."""
        return {"attention_window": self._window_json()}

    def info(self) -> dict:
        return {"architecture": self.architecture, "source": self.source, "config": self.config.to_json(),
                "parameter_count": self.parameter_count, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device), **self._settings(), **self.load_info}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._w)

    def cache_key(self):
        return self._window


class ScannedFamilyModel(FamilyModel):
    """A family whose recurrence has a compiled CPU loop besides the torch one.  ``scan``:
    ``"numba"`` (the compiled loop, a dependency), ``"torch"`` (the reference, and the path on
    GPUs and in half precision) or ``"auto"`` (numba on a CPU, unless it cannot be imported)."""

    def __init__(self, config, weights: dict, *, scan: str = "auto", **kwargs):
        _check_scan(scan)
        self._scan_request = scan
        super().__init__(config, weights, **kwargs)

    @property
    def scan(self) -> str:
        """The scan in use: ``"numba"`` or ``"torch"``."""
        compiled = self.device.type == "cpu" and self.dtype in (torch.float32, torch.float64)
        if self._scan_request == "auto":
            return "numba" if compiled and numba_available() else "torch"
        if self._scan_request == "numba" and not compiled:  # GPUs and half precision
            return "torch"
        return self._scan_request

    @scan.setter
    def scan(self, value: str):
        _check_scan(value)
        if value == "numba" and not numba_available():
            raise ValueError("scan='numba' needs a working numba package (pip install numba)")
        self._scan_request = value

    def _settings(self) -> dict:
        return {"scan": self.scan, **super()._settings()}

    def cache_key(self):
        return (self.scan, self._window)


def _check_scan(scan: str):
    if scan not in SCANS:
        raise ValueError(f"scan must be 'auto', 'numba' or 'torch', got {scan!r}")


# -- the probe table -------------------------------------------------------------------------
def probe_table(num_layers: int, sites, described: dict, embed: tuple, logits: tuple,
                dims: dict | None = None) -> list[ProbeSpec]:
    """The probes of a model: ``embed``, every site of every layer, ``logits``.

    ``described[site]`` is ``(shape or width, description)``; ``dims[site]`` the axis names (by
    default ``("token", "key")`` for ``attn``, ``("token", "unit")`` for the others); ``embed`` and
    ``logits`` are ``(width, description)``."""
    dims = dims or {}
    specs = [ProbeSpec("embed", (embed[0],), ("token", "unit"), embed[1])]
    for k in range(num_layers):
        for site in sites:
            shape, text = described[site]
            shape = shape if isinstance(shape, tuple) else (shape,)
            axes = dims.get(site, ("token", "key") if site == "attn" else ("token", "unit"))
            specs.append(ProbeSpec(layer_probe(k, site), shape, axes, text, layer=k, site=site))
    specs.append(ProbeSpec("logits", (logits[0],), ("token", "class"), logits[1]))
    return specs


# -- loaders ---------------------------------------------------------------------------------
def _listed(items: list[str], limit: int, sep: str = ", ") -> str:
    """The first ``limit`` items, and how many more there are."""
    text = sep.join(items[:limit])
    if len(items) > limit:
        text += f"{sep.rstrip(', ')} and {len(items) - limit} more"
    return text


def check_loaded_weights(name: str, what: str, expected: dict, canon: dict, origin: dict, strict: bool, *,
                         ignored=(), hints: dict | None = None) -> list[str]:
    """Compare a checkpoint's tensors (``canon``, by canonical name; ``origin`` maps a canonical name
    to its name in the file) with the weights a model of ``what`` has (``expected``).  Raises a
    LoadError naming the missing, misshapen and (when ``strict``) unexpected tensors by their
    names in the file; returns the unexpected ones otherwise.  ``ignored``: canonical names that
    are neither expected nor unexpected.  ``hints[key]``: said after the missing tensors when
    ``key`` is the only one missing."""
    key = lambda cn: origin.get(cn, cn)  # noqa: E731
    missing = [cn for cn in expected if cn not in canon]
    bad = [f"{key(cn)} is {list(canon[cn].shape)}, expected {list(expected[cn])}" for cn in expected
           if cn in canon and tuple(canon[cn].shape) != tuple(expected[cn])]
    unused = [key(cn) for cn in canon if cn not in expected and cn not in ignored]
    parts = []
    if missing:
        parts.append("missing " + _listed([key(cn) for cn in missing], 12))
        if len(missing) == 1 and missing[0] in (hints or {}):
            parts[-1] += " " + hints[missing[0]]
    if bad:
        parts.append("wrong shapes: " + _listed(bad, 8, "; "))
    if unused and strict:
        parts.append("unexpected " + _listed(unused, 12) + " (load with strict=False, seqscope --no-strict, to ignore them)")
    if parts:
        raise LoadError(f"{name} does not hold the weights of {what}: " + ". ".join(parts))
    return unused


def unused_note(unused: list[str]) -> str:
    """The load note on tensors a non-strict load passed over."""
    return "unused tensors (strict=False): " + ", ".join(unused[:12])


def build_model(model_class, config, weights: dict, *, name: str, label: str, **kwargs):
    """``model_class(config, weights, **kwargs)``, any failure a LoadError that names the file."""
    try:
        return model_class(config, weights, **kwargs)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise LoadError(f"{name}: could not build the {label} model: {exc}") from None


# -- configs ---------------------------------------------------------------------------------
#: the largest size or count a config may state (any real width, layer count or vocabulary is far below)
MAX_CONFIG_INT = 2**31 - 1
_MISSING = object()


def value_kind(value) -> str:
    """What a config value is, in words (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _shown(value) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def checked_value(key: str, value, kind: str, *, nullable: bool = False):
    """``value`` as a config entry of ``kind``, or a ValueError naming ``key``, what the value is
    and what was expected.  Kinds: ``"int"`` (a whole number 0..2^31-1; 3.0 is taken as 3),
    ``"float"`` (a finite number), ``"bool"`` (true/false; 0 and 1 taken), ``"str"``, ``"tuple"``
    (a list), ``"dict"`` (an object)."""
    if value is None and nullable:
        return None
    bad = f"{key} is {_shown(value)} ({value_kind(value)})"
    if kind == "int":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{bad}, expected a whole number")
        if not 0 <= value <= MAX_CONFIG_INT:
            raise ValueError(f"{key} is {value}, expected a whole number from 0 to {MAX_CONFIG_INT}")
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{bad}, expected a finite number")
        return float(value)
    if kind == "bool":
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
        if not isinstance(value, bool):
            raise ValueError(f"{bad}, expected true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{bad}, expected text")
        return value
    if kind == "tuple":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{bad}, expected a list")
        return tuple(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"{bad}, expected an object of named entries")
        return value
    raise AssertionError(kind)


def stated(d: dict, key: str, kind: str, src: str, default=_MISSING, *, nullable: bool = False):
    """The entry ``key`` of a config dict read from a file (``src`` names it), checked as
    :func:`checked_value` does; ``default`` when it is absent (or null, unless ``nullable``).
    A wrong value is a LoadError such as "config.json: num_hidden_layers is '2' (text),
    expected a whole number"."""
    if not isinstance(d, dict):
        raise LoadError(f"{src} is {value_kind(d)}, expected an object of named entries")
    value = d.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise LoadError(f"{src} has no {key}, which it needs")
        return default
    try:
        return checked_value(key, value, kind, nullable=nullable)
    except ValueError as exc:
        raise LoadError(f"{src}: {exc}") from None


class StatedConfig:
    """A config dict read from a file (``src`` names it in messages), whose entries are taken
    through :func:`stated`: a value of the wrong type or range is a LoadError naming the key,
    what it is and what was expected, never a TypeError later on."""

    def __init__(self, d, src: str):
        if not isinstance(d, dict):
            raise LoadError(f"{src} is {value_kind(d)}, expected an object of named entries")
        self.d, self.src = d, src

    def whole(self, key: str, default=_MISSING):
        """A whole number 0..2^31-1 (3.0 taken as 3)."""
        return stated(self.d, key, "int", self.src, default)

    def number(self, key: str, default=_MISSING, *, nullable: bool = False):
        """A finite number."""
        return stated(self.d, key, "float", self.src, default, nullable=nullable)

    def flag(self, key: str, default=_MISSING):
        """true or false."""
        return stated(self.d, key, "bool", self.src, default)

    def mapping(self, key: str, default=_MISSING) -> "StatedConfig":
        """An object of named entries, itself a StatedConfig."""
        return StatedConfig(stated(self.d, key, "dict", self.src, default), f"{self.src} entry {key}")

    def scaled(self, key: str, base: int, default: float) -> int:
        """``int(base * factor)`` for the factor ``key`` (a finite number; null or absent: ``default``),
        refused when the size it makes is out of a size's range."""
        factor = self.number(key, default, nullable=True)
        factor = default if factor is None else factor
        size = base * factor
        if not 0 <= size <= MAX_CONFIG_INT:
            raise LoadError(f"{self.src}: {key} is {_shown(factor)}, which makes a size of {size:g}; expected a "
                            f"factor giving 0 to {MAX_CONFIG_INT}")
        return int(size)

    def sizes(self, pairs) -> dict:
        """``{ours: whole number}`` for each ``(ours, theirs)`` whose ``theirs`` the config states."""
        return {ours: self.whole(theirs) for ours, theirs in pairs if theirs in self.d}

    def get(self, key: str, default=None):
        return self.d.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.d


_KIND_WORDS = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text",
               "tuple": "a list", "dict": "an object of named entries"}


def _field_kind(annotation) -> tuple[str | None, bool]:
    """(kind for :func:`checked_value`, whether None is allowed) of a dataclass field's annotation."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = {p.strip() for p in text.split("|")}
    nullable = "None" in parts or text.startswith("Optional")
    parts.discard("None")
    kind = parts.pop() if len(parts) == 1 else None
    return (kind if kind in _KIND_WORDS else None), nullable


def checked_fields(cls, d: dict) -> dict:
    """The entries of ``d`` that are fields of the dataclass ``cls``, each checked against its
    annotation (int, float, bool, str, tuple; ``| None`` allows null): a ValueError names the
    first that does not fit."""
    out = {}
    for name, f in cls.__dataclass_fields__.items():
        if name not in d:
            continue
        kind, nullable = _field_kind(f.type)
        out[name] = d[name] if kind is None else checked_value(name, d[name], kind, nullable=nullable)
    return out


class FamilyConfig:
    """What every family's config (a frozen dataclass) does alike: ``to_json`` tagged with the
    family (so a trace file says which family wrote it), ``from_dict`` that passes over keys which
    are not fields and checks each value's type, and the check that sizes are positive."""

    #: the ``family`` entry of :meth:`to_json`
    FAMILY = ""
    #: the field that counts the layers
    LAYERS_FIELD = "n_layer"

    def family_tag(self) -> str:
        return self.FAMILY

    def to_json(self) -> str:
        return json.dumps({"family": self.family_tag(), **asdict(self)})

    @classmethod
    def from_dict(cls, d: dict):
        """The config from a dict; a ValueError names an entry of the wrong type or range."""
        return cls(**checked_fields(cls, d))

    def require_positive(self, *names):
        """A ValueError naming the first of the fields ``names`` that is not positive."""
        for name in names:
            if not isinstance(getattr(self, name), (int, float)) or int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def config_from_fields(config_class, fields: dict, *, name: str, label: str, tensors: dict):
    """``config_class.from_dict(fields)`` for a checkpoint ``name`` holding ``tensors``: a wrong
    value is a LoadError naming it, and a layer count the file cannot hold (each layer has at
    least one tensor) is refused before anything loops over it."""
    try:
        cfg = config_class.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise LoadError(f"{name}: the {label} config is not valid: {exc}") from None
    layers_field = getattr(config_class, "LAYERS_FIELD", "n_layer")
    check_declared_layers(getattr(cfg, layers_field), len(tensors), name, layers_field)
    return cfg


def names_under(tensors: dict, prefix: str, root: str, head: str) -> tuple[dict, dict]:
    """File keys -> canonical names for a file whose model body stands under ``prefix``: keys
    under it move under ``root`` (``model.``, ``rwkv.``), a head key (``lm_head.…``) beside the
    body keeps its name, anything else is left as it is.  Returns (canonical -> tensor,
    canonical -> file key)."""
    outer = prefix[: -len(root)] if prefix.endswith(root) else ""
    canon, origin = {}, {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            cn = root + k[len(prefix):]
        elif k.startswith(outer) and k[len(outer):].startswith(head):
            cn = k[len(outer):]
        else:
            cn = k
        canon[cn], origin[cn] = v, k
    return canon, origin


def untied_if_the_file_says_so(cfg, field: str, canon: dict, head: str, embed: str, notes: list[str]):
    """``cfg`` with ``field`` (its tie of the head to the embeddings) false where the config says
    true but the file holds a head that differs from the embeddings: the weights decide, as in
    ``transformers``, which loads such a head as it is (a note says so)."""
    lm, e = canon.get(head), canon.get(embed)
    if not getattr(cfg, field) or lm is None or e is None or lm.shape != e.shape or torch.equal(lm, e):
        return cfg
    notes.append(f"the config says the head is tied to the embeddings, but the file holds its own {head}, which "
                 "differs from them: the file's head was used")
    return replace(cfg, **{field: False})
