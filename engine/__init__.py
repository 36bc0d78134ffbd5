"""SeqScope's engine: load a trained sequence model, run it with every internal recorded,
intervene inside the recurrence, and keep the results as traces.  No Qt here: everything the
workbench does, a notebook can do with ``engine`` alone.

    >>> import engine
    >>> model = engine.load("char_lstm.pt")
    >>> trace = engine.run(model, "def f(x):\\n    return x", probes="layers.*.c")
    >>> trace["layers.1.c"].shape
"""
from .errors import Cancelled, InputError, LoadError, SeqScopeError
from .interventions import Intervention, InterventionError, PatchSource, Span
from .probes import ProbeSpec
from .run import PrefixCache, run
from .trace import Trace

__version__ = "0.1.0"


def load(path, **kwargs):
    """Open a checkpoint file or folder and build an instrumented model (see ``engine.loading``)."""
    from .loading import load as _load

    return _load(path, **kwargs)


def save_trace(trace, path, **kwargs):
    from .hdf5 import save_trace as _save

    return _save(trace, path, **kwargs)


def load_trace(path):
    from .hdf5 import load_trace as _load

    return _load(path)


__all__ = [
    "load", "run", "Trace", "Intervention", "PatchSource", "Span", "ProbeSpec", "PrefixCache",
    "save_trace", "load_trace", "LoadError", "InputError", "InterventionError", "Cancelled",
    "SeqScopeError", "__version__",
]
