"""Property: whatever bytes a checkpoint holds, ``engine.load`` returns a model or raises a
``LoadError``, nothing else, in bounded time and memory.

Random byte edits (overwrites, truncation, insertion, deletion) of valid small checkpoints of
several kinds: a PyTorch zip ``.pt``, a legacy ``.pt``, a ``.safetensors`` with SeqScope's
metadata, and a Hugging Face folder (the bundled Mamba: its ``config.json``, ``vocab.json``
or weights edited).  Derandomized, so a failure reproduces.
"""
from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import engine  # noqa: E402
from bad_inputs.checks import address_space  # noqa: E402
from bad_inputs.gen_checkpoints import canonical_arrays, lstm_arrays, lstm_pt, lstm_safetensors, seqscope_metadata  # noqa: E402
from bad_inputs.gen_folders import MAMBA  # noqa: E402

SECONDS = 10
EXTRA_MEMORY = 2 << 30

BASES = {
    "pt-zip": ("model.pt", lstm_pt(lstm_arrays(0))),
    "pt-legacy": ("model.pth", lstm_pt(lstm_arrays(0), legacy=True)),
    "safetensors": ("model.safetensors", lstm_safetensors(canonical_arrays(1), seqscope_metadata())),
    "folder-config": ("config.json", (MAMBA / "config.json").read_bytes()),
    "folder-vocab": ("vocab.json", (MAMBA / "vocab.json").read_bytes()),
    "folder-weights": ("model.safetensors", (MAMBA / "model.safetensors").read_bytes()),
}


class _Timeout(BaseException):
    pass


@contextlib.contextmanager
def bounded(seconds: int, extra_bytes: int):
    """A time limit (SIGALRM) and an address-space limit for the block, both lifted after."""
    def alarm(signum, frame):
        raise _Timeout()

    old_handler = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + extra_bytes, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old_handler)


def _mutate(data: bytes, edits, cut, insert) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    if insert is not None:
        pos, blob = insert
        p = pos % (len(out) + 1)
        out[p:p] = blob
    if cut is not None and out:
        start = cut[0] % len(out)
        out = out[:start] + out[start + cut[1]:] if cut[1] else out[:start]
    return bytes(out)


def _place(folder: Path, kind: str, data: bytes) -> Path:
    """Write the mutated bytes where ``kind`` keeps them; return what engine.load opens."""
    name = BASES[kind][0]
    if not kind.startswith("folder"):
        (folder / name).write_bytes(data)
        return folder / name
    for f in ("config.json", "vocab.json", "model.safetensors"):
        if f != name:
            shutil.copy(MAMBA / f, folder / f)
    (folder / name).write_bytes(data)
    return folder


edits = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=6)
cuts = st.none() | st.tuples(st.integers(0, 2**31), st.integers(0, 64))
inserts = st.none() | st.tuples(st.integers(0, 2**31), st.binary(min_size=1, max_size=32))


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kind=st.sampled_from(sorted(BASES)), edits=edits, cut=cuts, insert=inserts)
def test_mutated_checkpoint_loads_or_raises_load_error(kind, edits, cut, insert):
    data = _mutate(BASES[kind][1], edits, cut, insert)
    with tempfile.TemporaryDirectory(prefix="seqscope-prop-") as tmp:
        path = _place(Path(tmp), kind, data)
        try:
            with bounded(SECONDS, EXTRA_MEMORY):
                model = engine.load(path, device="cpu")
        except engine.LoadError as exc:
            text = str(exc).strip()
            assert text and "Traceback" not in text, text
        except _Timeout:
            pytest.fail(f"engine.load ran past {SECONDS} s on a mutated {kind}")
        else:
            assert model.probe_specs(), "a model with no probes"


@settings(max_examples=25, deadline=None, database=None, derandomize=True)
@given(config=st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12),
    key=st.sampled_from(["num_hidden_layers", "hidden_size", "vocab_size", "state_size", "expand", "conv_kernel",
                         "time_step_rank", "layer_norm_epsilon", "intermediate_size", "model_type"]))
def test_any_value_in_a_config_json_loads_or_raises_load_error(config, key):
    """The bundled Mamba folder with one config.json entry replaced by any JSON value."""
    cfg = json.loads((MAMBA / "config.json").read_text())
    cfg[key] = config
    with tempfile.TemporaryDirectory(prefix="seqscope-prop-") as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(cfg))
        shutil.copy(MAMBA / "vocab.json", folder / "vocab.json")
        (folder / "model.safetensors").symlink_to(MAMBA / "model.safetensors")
        try:
            with bounded(SECONDS, EXTRA_MEMORY):
                engine.load(folder, device="cpu")
        except engine.LoadError as exc:
            assert str(exc).strip()
        except _Timeout:
            pytest.fail(f"engine.load ran past {SECONDS} s with config {key}={config!r}")
