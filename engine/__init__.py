"""SeqScope's engine: load a trained sequence model, run it with every internal recorded,
intervene inside the recurrence, and keep the results as traces.  No Qt here: everything the
workbench does, a notebook can do with ``engine`` alone.

    >>> import engine
    >>> model = engine.load("char_lstm.pt")
    >>> trace = engine.run(model, "def f(x):\\n    return x", probes="layers.*.c")
    >>> trace["layers.1.c"].shape
"""
import os as _os

# OpenMP worker threads that spin while they wait make torch many times slower whenever another
# busy process shares the cores (measured here: a 2-layer LSTM on 16k characters took 0.44 s on
# one thread, 2-32 s on two spinning threads, 0.6 s on two passive ones).  Only effective when
# set before torch is first imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import Cancelled, InputError, LoadError, SeqScopeError  # noqa: E402
from .initial_state import final_state  # noqa: E402
from .interventions import Intervention, InterventionError, PatchSource, Span  # noqa: E402
from .probes import ProbeSpec  # noqa: E402
from .run import PrefixCache, run  # noqa: E402
from .trace import Trace  # noqa: E402

__version__ = "0.1.0"


def load(path, **kwargs):
    """Open a checkpoint file or folder and build an instrumented model (see ``engine.loading``).
    Weights holding NaN or infinity are named in ``model.info()["notes"]`` (a warning, not a
    refusal: a broken model can still be inspected)."""
    from .loading import load as _load
    from .nonfinite import note_nonfinite_weights

    return note_nonfinite_weights(_load(path, **kwargs))


def save_trace(trace, path, **kwargs):
    from .hdf5 import save_trace as _save

    return _save(trace, path, **kwargs)


def load_trace(path):
    from .hdf5 import load_trace as _load

    return _load(path)


__all__ = [
    "load", "run", "Trace", "Intervention", "PatchSource", "Span", "ProbeSpec", "PrefixCache",
    "save_trace", "load_trace", "LoadError", "InputError", "InterventionError", "Cancelled",
    "SeqScopeError", "final_state", "__version__",
]
