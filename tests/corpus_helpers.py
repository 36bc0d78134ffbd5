"""Small corpus traces for the corpus-query tests: synthetic ones with ties, NaN, constant units
and empty sequences, written with or without ``/summary``, and stitched from shard files with
HDF5 virtual datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.corpus.summary import summarize
from engine.hdf5 import save_trace
from engine.probes import ProbeSpec
from engine.trace import Trace

ALPHABET = list("abcXYZ019 ,.()=_\"'\n")


def synthetic_trace(lengths=(0, 1, 57, 300, 12, 421, 2, 88), units: int = 24, seed: int = 0) -> Trace:
    """A text corpus of len(lengths) sequences with probes ``layers.0.h`` ([N, units]: smooth
    units, units quantised to eighths (many ties), a constant unit, a unit with NaN and inf) and
    ``layers.0.state`` ([N, 3, 4])."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    text = [ALPHABET[i] for i in rng.integers(0, len(ALPHABET), n)]
    ids = np.array([ALPHABET.index(c) for c in text], np.int32)
    walk = np.cumsum(rng.standard_normal((n, units)) * 0.3, axis=0)
    h = np.tanh(walk + rng.standard_normal((n, units)) * 0.2)
    h[:, 1::3] = np.round(h[:, 1::3] * 8) / 8  # ties
    h[:, 5] = 0.25  # constant
    h[7, 4], h[60, 4], h[61, 4] = np.nan, np.inf, -np.inf
    quote = np.array([c == '"' for c in text])
    h[:, 2] = np.where(np.cumsum(quote) % 2 == 1, 0.9, -0.2) + rng.standard_normal(n) * 0.05  # "inside quotes"
    state = rng.standard_normal((n, 3, 4))
    arrays = {"layers.0.h": h.astype(np.float32), "layers.0.state": state.astype(np.float32)}
    specs = {"layers.0.h": ProbeSpec("layers.0.h", (units,), ("token", "unit"), "hidden", layer=0, site="h"),
             "layers.0.state": ProbeSpec("layers.0.state", (3, 4), ("token", "unit", "state"), "state", layer=0,
                                         site="state")}
    return Trace(tokens=ids, offsets=offsets, arrays=arrays, specs=specs, token_text=text,
                 model_info={"architecture": "lstm", "source": "synthetic"})


def add_summaries(path, k: int = 16) -> None:
    """Write ``/summary/<probe>/`` for every probe, from the values as stored."""
    import h5py

    with h5py.File(path, "a") as f:
        group = f.require_group("summary")
        for name in json.loads(f["probes"].attrs["order"]):
            data = f["probes"][name][...]
            summarize(data, k=k).write(group, name)


def write_corpus(trace: Trace, path, *, summary: bool = False, dtype=None, k: int = 16) -> Path:
    path = Path(path)
    save_trace(trace, path, dtype=dtype)
    if summary:
        add_summaries(path, k)
    return path


def sub_trace(trace: Trace, s0: int, s1: int) -> Trace:
    a, b = int(trace.offsets[s0]), int(trace.offsets[s1])
    return Trace(tokens=trace.tokens[a:b], offsets=trace.offsets[s0:s1 + 1] - a,
                 arrays={k: v[a:b] for k, v in trace.arrays.items()}, specs=trace.specs,
                 token_text=trace.token_text[a:b], model_info=trace.model_info)


def write_stitched(trace: Trace, folder, cuts, *, dtype=None) -> Path:
    """Shard files (one per group of sequences between ``cuts``) and ``corpus.h5`` whose tokens,
    text and probes are virtual datasets over them (offsets and attributes real)."""
    import h5py

    folder = Path(folder)
    (folder / "corpus.h5.shards").mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, trace.n_sequences]
    shards = []
    for i, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
        p = folder / "corpus.h5.shards" / f"{i:04d}.h5"
        save_trace(sub_trace(trace, s0, s1), p, dtype=dtype)
        shards.append(p)
    out = folder / "corpus.h5"
    with h5py.File(shards[0], "r") as first, h5py.File(out, "w") as f:
        for k, v in first.attrs.items():
            f.attrs[k] = v
        f.copy(first["model"], "model")
        f.create_group("sequences").create_dataset("offsets", data=trace.offsets)
        names = [("tokens/ids", first["tokens/ids"]), ("tokens/text", first["tokens/text"])]
        names += [(f"probes/{n}", first["probes"][n]) for n in trace.arrays]
        for where, ds in names:
            shape = (trace.n_tokens,) + ds.shape[1:]
            layout = h5py.VirtualLayout(shape=shape, dtype=ds.dtype)
            row = 0
            for p in shards:
                with h5py.File(p, "r") as sf:
                    m = sf[where].shape[0]
                if m:
                    layout[row:row + m] = h5py.VirtualSource(str(p.relative_to(folder)), where,
                                                             shape=(m,) + ds.shape[1:])
                row += m
            if where.startswith("probes/") and "probes" not in f:
                f.create_group("probes").attrs["order"] = json.dumps(list(trace.arrays))
            vds = f.create_virtual_dataset(where, layout, fillvalue=None)
            for k, v in ds.attrs.items():
                vds.attrs[k] = v
    return out


PACKAGES = ("click", "jinja2", "attr", "idna", "h5py")  # installed third-party code, not the stdlib


def third_party_python(folder: Path, budget: int) -> int:
    """Copy .py files of installed third-party packages (tests left out) into ``folder``, up to
    ``budget`` characters; returns the characters copied."""
    import importlib.util

    n = 0
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        for p in sorted(root.rglob("*.py")):
            if "test" in p.relative_to(root).as_posix():
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
            if n + len(text) > budget:
                continue
            (folder / f"{pkg}_{p.relative_to(root).as_posix().replace('/', '_')}").write_text(text, encoding="utf-8")
            n += len(text)
    return n
