"""Checking each field of an intervention: the bounds, and the plain sentence that names the field
when a value does not fit.  Used by :mod:`engine.interventions` for Python-built and JSON-read
interventions alike, so that both refuse the same things the same way."""
from __future__ import annotations

import math
import reprlib

import numpy as np
import torch

from .errors import InterventionError

PATCH_DTYPES = ("float16", "float32", "float64")

# Bounds on what an intervention may hold: generous for real use, small enough that a hostile
# file cannot make the parser loop or allocate for long.
MAX_INDEX = 2**40  # a position or unit index (a trillion tokens or units)
MAX_ITEMS = 2**22  # entries in a list of positions, units or values
MAX_PROBE_NAME = 256  # characters
MAX_INTERVENTIONS = 10_000  # in one JSON document
MAX_JSON_BYTES = 256 * 2**20  # an interventions file or argument
MAX_PATCH_DIMS = 6  # [tokens, ...]: a probe with several axes per token (an RWKV-7 state is [tokens, heads, k, v])
MAX_SHOWN = 80  # characters of a value quoted in a message


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlist = _short.maxtuple = 6
_short.maxdict = 4
_short.maxlevel = 3


def describe(value) -> str:
    """A short, always-safe rendering of any value for an error message (bounded in length and
    depth, whatever the value holds)."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    try:
        text = _short.repr(value)
    except Exception:  # a value whose repr fails: name its type instead
        return f"a {type(value).__name__}"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 4] + " ..." + text[-1:]


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def index(field: str, x) -> int:
    """One position or unit index: a whole number 0..MAX_INDEX."""
    if not is_int(x):
        raise InterventionError(f"{field} must be whole numbers >= 0, got {describe(x)}")
    x = int(x)
    if not 0 <= x <= MAX_INDEX:
        raise InterventionError(f"{field} must be whole numbers from 0 to {MAX_INDEX}, got {x}")
    return x


def finite_number(field: str, x) -> float:
    """One number of a value: real and finite (NaN and infinity would silently turn every later
    state into NaN; JSON cannot even write them)."""
    if not is_real(x):
        raise InterventionError(f"{field} must be numbers, got {describe(x)}")
    try:
        f = float(x)
    except OverflowError:
        raise InterventionError(f"{field} holds a number too large for a float ({describe(x)})") from None
    if not math.isfinite(f):
        raise InterventionError(f"{field} must be finite numbers, got {f}")
    return f


def index_list(field: str, values) -> tuple[int, ...]:
    """A list of indices (or one index) as a tuple of ints, in the given order."""
    if is_int(values):
        return (index(field, values),)
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise InterventionError(f"{field} must be a list of whole numbers >= 0, got {describe(values)}")
        values = values.tolist()
    if not isinstance(values, (list, tuple, range)):
        raise InterventionError(f"{field} must be a list of whole numbers >= 0, got {describe(values)}")
    if len(values) == 0:
        raise InterventionError(f"{field} is an empty list, which selects nothing; leave it out (or null) "
                                f"to select all {field}")
    if len(values) > MAX_ITEMS:
        raise InterventionError(f"{field} lists {len(values):,} entries; at most {MAX_ITEMS:,} are allowed")
    return tuple(index(field, v) for v in values)


def check_probe_name(probe, field: str = "probe") -> None:
    if not isinstance(probe, str):
        raise InterventionError(f"{field} must be one probe name (a string such as 'layers.0.h'), "
                                f"got {describe(probe)}")
    if not probe or len(probe) > MAX_PROBE_NAME:
        raise InterventionError(f"{field} must be a probe name of 1 to {MAX_PROBE_NAME} characters, "
                                f"got {describe(probe)}")


def numbers(field: str, value) -> float | tuple[float, ...]:
    """A scalar or a flat list of finite numbers (the value of set/add/scale)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise InterventionError(f"{field} must be numbers, got {describe(value)}")
        if value.ndim == 0:
            return finite_number(field, value.item())
        if value.ndim != 1:
            raise InterventionError(f"{field} must be one number or one number per unit, got {describe(value)}")
        value = value.tolist()
    if is_real(value):
        return finite_number(field, value)
    if not isinstance(value, (list, tuple)):
        raise InterventionError(f"{field} must be one number or a list of numbers (one per unit), "
                                f"got {describe(value)}")
    if len(value) == 0:
        raise InterventionError(f"{field} is an empty list; give one number, or one per selected unit")
    if len(value) > MAX_ITEMS:
        raise InterventionError(f"{field} lists {len(value):,} numbers; at most {MAX_ITEMS:,} are allowed")
    return tuple(finite_number(field, v) for v in value)


def patch_array(value) -> np.ndarray:
    """Activations held in memory for 'patch': a float array [tokens, units] (or [units], or
    [tokens, units, state]) of finite numbers."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if value.dtype.kind in "iu":
        value = value.astype(np.float32)
    if value.dtype.kind != "f":
        raise InterventionError(f"a patch array must hold numbers (float16/32/64), got {describe(value)}")
    if not 1 <= value.ndim <= MAX_PATCH_DIMS or value.size == 0:
        raise InterventionError(f"a patch array must be [tokens, units] (or [units]) with at least one value, "
                                f"got shape {value.shape}")
    if not np.isfinite(value).all():
        raise InterventionError("a patch array must hold finite numbers; it has NaN or infinity")
    return value


def array_from_json(data, dtype) -> np.ndarray:
    """Nested JSON lists of numbers to a float array, checking the leaves before numpy sees them
    (numpy would read "1.5" as a number, and ragged or deep lists as objects)."""
    if not isinstance(dtype, str) or dtype not in PATCH_DTYPES:
        raise InterventionError(f"a patch array's dtype must be one of {', '.join(PATCH_DTYPES)}, "
                                f"got {describe(dtype)}")
    if not isinstance(data, list):
        raise InterventionError(f"a patch array must be a list (of lists) of numbers, got {describe(data)}")
    level, count = [data], 0
    for _depth in range(MAX_PATCH_DIMS):
        if not any(isinstance(x, list) for x in level):
            break
        if not all(isinstance(x, list) for x in level):
            raise InterventionError("a patch array must be a regular [tokens, units] list of lists of numbers")
        level = [y for x in level for y in x]
        count += len(level)
        if count > MAX_ITEMS * 16:
            raise InterventionError(f"a patch array in JSON may hold at most {MAX_ITEMS * 16:,} numbers")
    for x in level:
        if not is_real(x):
            raise InterventionError(f"a patch array must hold numbers only, got {describe(x)}")
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InterventionError("a patch array must be a regular [tokens, units] list of lists of numbers") from None
    if not np.isfinite(arr).all():
        raise InterventionError("a patch array must hold finite numbers; it has NaN, infinity or a huge value")
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if not np.isfinite(out).all():
        raise InterventionError(f"a patch array holds numbers too large for {dtype}")
    return out
