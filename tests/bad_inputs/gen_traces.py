"""Bad trace files (HDF5, SeqScope's schema 1), written with h5py directly."""
from __future__ import annotations

import json
import random

import numpy as np

from .corpus import Corpus
from .gen_checkpoints import truncations_and_flips

N, WIDTH, V = 12, 8, 11


def write_trace(path, change=None) -> None:
    """A small valid trace (one sequence of N tokens, one probe, logits); ``change(f)`` edits it
    before it is closed."""
    import h5py

    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "seqscope-trace", "schema_version": 1, "seqscope_version": "0.1.0",
                        "created": "2026-01-01T00:00:00+00:00", "interventions": "[]"})
        m = f.create_group("model")
        m.attrs.update({"architecture": "lstm", "source": "corpus", "config": "{}", "parameter_count": np.int64(1),
                        "json_encoded": "[]"})
        t = f.create_group("tokens")
        t.create_dataset("ids", data=np.arange(N, dtype=np.int32) % V)
        ds = t.create_dataset("text", data=np.array(list("abcdefghij a"), dtype=object),
                              dtype=h5py.string_dtype("utf-8"))
        ds.attrs["encoding"] = "utf-8"
        f.create_group("sequences").create_dataset("offsets", data=np.array([0, N], dtype=np.int64))
        g = f.create_group("probes", track_order=True)
        g.attrs["order"] = json.dumps(["layers.0.h", "logits"])
        for where, name, width in ((g, "layers.0.h", WIDTH), (f, "logits", V)):
            ds = where.create_dataset(name, data=rng.standard_normal((N, width)).astype(np.float32))
            ds.attrs.update({"name": name, "dims": ["token", "unit"], "description": "", "layer": 0 if name != "logits" else -1,
                             "site": "h", "directions": 1, "shape": np.array([width], dtype=np.int64)})
        if change is not None:
            change(f)


def _replace(f, name, **kw):
    del f[name]
    f.create_dataset(name, **kw)


def _probe(f):
    return "probes/layers.0.h"


def build_traces(c: Corpus, rng: random.Random) -> None:
    import h5py

    def case(label, change, expect="error", cls="trace"):
        rel = f"traces/{label}.h5"
        write_trace(c.path(rel), change)
        c.add(f"trace/{label}", cls, "trace", "load_trace", rel, expect=expect)
        return rel

    valid = case("valid", None, expect="ok", cls="valid")
    fifo = c.fifo("traces/a-fifo")
    changes = {
        "probe-0d": lambda f: _replace(f, _probe(f), data=np.float32(1.0)),
        "probe-strings": lambda f: _replace(f, _probe(f), data=np.array(["a"] * N, dtype=object),
                                            dtype=h5py.string_dtype()),
        "probe-rows-differ": lambda f: _replace(f, _probe(f), data=np.zeros((N + 5, WIDTH), np.float32)),
        "probe-int": lambda f: _replace(f, _probe(f), data=np.zeros((N, WIDTH), np.int64)),
        "probe-compound": lambda f: _replace(f, _probe(f), data=np.zeros(N, dtype=[("a", "f4"), ("b", "i4")])),
        "tokens-2d": lambda f: _replace(f, "tokens/ids", data=np.zeros((N, 2), np.int32)),
        "tokens-float": lambda f: _replace(f, "tokens/ids", data=np.full(N, 1e30)),
        "softlink-loop": lambda f: (f.__delitem__(_probe(f)), f["probes"].__setitem__("layers.0.h", h5py.SoftLink("/probes/x")),
                                    f["probes"].__setitem__("x", h5py.SoftLink("/probes/layers.0.h"))),
        "dangling-softlink": lambda f: (f.__delitem__(_probe(f)),
                                        f["probes"].__setitem__("layers.0.h", h5py.SoftLink("/nowhere"))),
        "external-link-fifo": lambda f: (f.__delitem__(_probe(f)),
                                         f["probes"].__setitem__("layers.0.h", h5py.ExternalLink(str(c.root / fifo), "/x"))),
        "external-link-devzero": lambda f: (f.__delitem__(_probe(f)),
                                            f["probes"].__setitem__("layers.0.h", h5py.ExternalLink("/dev/zero", "/x"))),
        "unwritten-20Mx64": lambda f: _replace(f, _probe(f), shape=(20_000_000, 64), dtype="f4"),
        "unwritten-2Mx64": lambda f: _replace(f, _probe(f), shape=(2_000_000, 64), dtype="f4"),
        "unwritten-tokens-1e9": lambda f: _replace(f, "tokens/ids", shape=(10**9,), dtype="i4", chunks=(4096,)),
        "schema-2": lambda f: f.attrs.__setitem__("schema_version", 2),
        "schema-str": lambda f: f.attrs.__setitem__("schema_version", "abc"),
        "schema-array": lambda f: f.attrs.__setitem__("schema_version", np.arange(3)),
        "format-missing": lambda f: f.attrs.__delitem__("format"),
        "format-other": lambda f: f.attrs.__setitem__("format", "keras"),
        "offsets-beyond": lambda f: _replace(f, "sequences/offsets", data=np.array([0, N + 100])),
        "offsets-decreasing": lambda f: _replace(f, "sequences/offsets", data=np.array([0, 8, 3, N])),
        "offsets-2d": lambda f: _replace(f, "sequences/offsets", data=np.zeros((2, 2), np.int64)),
        "offsets-empty": lambda f: _replace(f, "sequences/offsets", data=np.zeros(0, np.int64)),
        "order-nested": lambda f: f["probes"].attrs.__setitem__("order", "[" * 100000),
        "order-missing-probe": lambda f: f["probes"].attrs.__setitem__("order", json.dumps(["nope"])),
        "order-not-list": lambda f: f["probes"].attrs.__setitem__("order", "5"),
        "interventions-nested": lambda f: f.attrs.__setitem__("interventions", "[" * 100000),
        "interventions-bogus-op": lambda f: f.attrs.__setitem__("interventions", json.dumps([{"probe": "x", "op": "bogus"}])),
        "interventions-1e999": lambda f: f.attrs.__setitem__(
            "interventions", '[{"probe": "layers.0.h", "op": "set", "value": 1, "positions": [1e999]}]'),
        "interventions-not-list": lambda f: f.attrs.__setitem__("interventions", '"abc"'),
        "json-encoded-nested": lambda f: f["model"].attrs.__setitem__("json_encoded", "[" * 100000),
        "json-encoded-config": lambda f: f["model"].attrs.__setitem__("json_encoded", '["config", "source"]'),
        "text-encoding-unknown": lambda f: f["tokens/text"].attrs.__setitem__("encoding", "rot13"),
        "text-bad-escape": lambda f: (f["tokens/text"].attrs.__setitem__("encoding", "unicode_escape"),
                                      f["tokens/text"].__setitem__(0, "\\x")),
        "shape-attr-huge": lambda f: f[_probe(f)].attrs.__setitem__("shape", np.array([10**12], np.int64)),
        "dims-attr-int": lambda f: f[_probe(f)].attrs.__setitem__("dims", 5),
        "layer-attr-str": lambda f: f[_probe(f)].attrs.__setitem__("layer", "abc"),
        "directions-attr-nan": lambda f: f[_probe(f)].attrs.__setitem__("directions", float("nan")),
        "tokens-missing": lambda f: f.__delitem__("tokens"),
        "model-missing": lambda f: f.__delitem__("model"),
        "probes-a-dataset": lambda f: (f.__delitem__("probes"), f.create_dataset("probes", data=np.zeros(3))),
    }
    for label, change in changes.items():
        case(label, change, expect="either" if label in ("dims-attr-int", "probe-int") else "error")
    data = c.path(valid).read_bytes()
    truncations_and_flips(c, rng, "trace", ".h5", data, entry="load_trace", n_cuts=8, n_flips=6)
    for label, make in (("fifo", c.fifo), ("dir", c.mkdir), ("devzero", lambda p: c.symlink(p, "/dev/zero")),
                        ("empty", lambda p: c.write(p, b"")), ("missing", lambda p: p),
                        ("checkpoint", lambda p: c.symlink(p, "../pt-zip/valid.pt"))):
        rel = f"traces/not-a-trace-{label}.h5"
        make(rel)
        c.add(f"trace/not-a-trace-{label}", "hostile-path", "trace", "load_trace", rel, expect="error")
