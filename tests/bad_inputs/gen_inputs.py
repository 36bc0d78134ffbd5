"""Bad inputs for a model (numeric ``.npy``/``.csv``, text), intervention JSON, project files,
hostile output paths, and command lines."""
from __future__ import annotations

import json
import os
import random
import stat
import struct

import numpy as np

from .corpus import Corpus
from .pickles import code_pickle

PROBE = "layers.0.c"  # the corpus's tiny LSTM (pt-zip/valid.pt): 2 layers of 8 units


def npy(header: str, data: bytes = b"", version=(1, 0)) -> bytes:
    h = header.encode("latin1")
    h += b" " * ((-(10 + len(h) + 1)) % 64) + b"\n"
    size = struct.pack("<H", len(h)) if version[0] == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes(version) + size + h + data


def build_numeric(c: Corpus, rng: random.Random) -> None:
    good = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    files = {
        "valid.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (20, 3), }", good.tobytes()),
        "object-pickle.npy": npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                                 code_pickle("global_reduce", c.marker("npy-object"))),
        "shape-1e12.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }", bytes(16)),
        "shape-1e8.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (100000000,), }", bytes(16)),
        "shape-overflow.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }"),
        "strings.npy": npy("{'descr': '<U3', 'fortran_order': False, 'shape': (2,), }", "abcdef".encode("utf-32-le")),
        "3d.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }", bytes(32)),
        "0d.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", bytes(4)),
        "datetime.npy": npy("{'descr': '<M8[s]', 'fortran_order': False, 'shape': (2,), }", bytes(16)),
        "header-garbage.npy": npy("__import__('os').system('true')"),
        "header-nested.npy": npy("{'descr': " + "[" * 5000 + "}", version=(2, 0)),
        "truncated.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (20, 3), }", good.tobytes()[:50]),
        "empty.npy": b"", "magic-only.npy": b"\x93NUMPY",
        "valid.csv": "a,b,c\n" + "\n".join(",".join(f"{x:.3f}" for x in r) for r in good),
        "ragged.csv": "1,2,3\n4,5\n", "text.csv": "x,y\nfoo,bar\n", "nul.csv": "1,2\n\x003,4\n",
        "huge-field.csv": "1," + "9" * 200_000 + "\n", "not-utf8.csv": b"1,2\n\xff\xfe,3\n",
        "nan-inf.csv": "nan,inf\n-inf,1e999\n", "one-column-1e5.csv": "\n".join(["1"] * 100_000),
        "wide-1e5.csv": ",".join(["1"] * 100_000), "quotes.csv": '"1,2\n3,4\n', "empty.csv": "",
    }
    for name, data in files.items():
        rel = c.write(f"numeric/{name}", data)
        expect = "ok" if name.startswith("valid") else "either" if name in (
            "nan-inf.csv", "one-column-1e5.csv", "wide-1e5.csv", "empty.csv", "quotes.csv") else "error"
        c.add(f"numeric/{name}", "numeric", "numeric", "numeric", rel, expect=expect)
    for label, make in (("fifo.csv", c.fifo), ("fifo.npy", c.fifo), ("dir.npy", c.mkdir),
                        ("devzero.csv", lambda p: c.symlink(p, "/dev/zero")),
                        ("devzero.npy", lambda p: c.symlink(p, "/dev/zero")), ("missing.csv", lambda p: p)):
        rel = f"numeric/{label}"
        make(rel)
        c.add(f"numeric/{label}", "hostile-path", "numeric", "numeric", rel, expect="error")


def build_text(c: Corpus, rng: random.Random) -> None:
    files = {"valid.txt": "abc de\n", "binary.txt": rng.randbytes(4096), "not-utf8.txt": b"abc\xff\xfe",
             "huge-line.txt": "a" * 1_000_000, "nul.txt": "ab\x00cd", "bom.txt": "\ufeffabc",
             "surrogate-name-\udcff.txt": "abc", "ids.npy": npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }",
                                                                 np.array([1, 2, 3], "<i8").tobytes()),
             "ids-object.npy": npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                                   code_pickle("global_reduce", c.marker("text-npy-object")))}
    for name, data in files.items():
        rel = c.write(f"text/{name}", data)
        expect = "ok" if name.startswith(("valid", "surrogate", "huge-line", "ids.npy")) else "either" if name in (
            "nul.txt", "bom.txt") else "error"
        c.add(f"text/{name}", "text", "text", "text", rel, expect=expect)
    for label, make in (("fifo.txt", c.fifo), ("dir.txt", c.mkdir),
                        ("devzero.txt", lambda p: c.symlink(p, "/dev/zero")), ("missing.txt", lambda p: p)):
        rel = f"text/{label}"
        make(rel)
        c.add(f"text/{label}", "hostile-path", "text", "text", rel, expect="error")


# -- interventions -------------------------------------------------------------------------------


def intervention_texts(c: Corpus) -> dict[str, tuple[str, str]]:
    """label -> (JSON text, expect)"""
    fifo = str(c.root / c.fifo("interventions/a-fifo.h5"))
    base = {"probe": PROBE, "op": "set", "value": 1.0, "positions": [1, 2], "units": [0, 3]}
    out: dict[str, tuple[str, str]] = {"valid": (json.dumps(base), "ok"),
                                       "valid-zero": (json.dumps({"probe": PROBE, "op": "zero"}), "ok"),
                                       "valid-span": (json.dumps({**base, "positions": {"start": 2, "stop": None}}), "ok")}
    fields = {
        "probe": [5, None, [], "", "no.such.probe", "layers.99.h", "x" * 10000, {"a": 1}],
        "op": ["bogus", 5, None, [], "ZERO"],
        "value": ["abc", [], [[1]], {"array": "x"}, {"array": [[1, 2]], "dtype": "object"},
                  {"array": [1], "dtype": "complex128"}, {"array": ["a"], "dtype": "str"}, {"file": 5},
                  {"file": "/dev/zero"}, {"file": fifo}, {"file": "no-such-trace.h5"}, "1e999", "NaN", "-Infinity",
                  True, "1" + "0" * 400, {"bogus": 1}, {"array": [[1.0] * 8] * 2, "dtype": "float32"},
                  [1.0, 2.0, 3.0], {"array": [1], "dtype": "<f4", "extra": "x"}, {"file": "x", "sequence": "abc"},
                  {"array": [1], "dtype": "V8"}],
        "positions": [5, -1, "abc", ["1e999"], [1.5], {"start": -1}, {"start": "a"}, {"start": 0, "stop": -5},
                      {"start": "1e999"}, ["1" + "0" * 30], [[1]], {"start": 0, "stop": "1" + "0" * 30}, [None],
                      {"start": 0, "stop": 1.5}, [True]],
        "units": [[], [-1], [10**9], "abc", [1.5], [1, 1], 5, [True], [None], {"a": 1}, ["1e999"]],
    }
    for field, values in fields.items():
        for k, v in enumerate(values):
            iv = dict(base)
            if field == "value" and isinstance(v, dict) and ("file" in v or "array" in v):
                iv["op"] = "patch"
            iv[field] = v
            text = json.dumps(iv)
            for token in ("1e999", "NaN", "-Infinity", "1" + "0" * 400, "1" + "0" * 30):  # raw JSON numbers
                text = text.replace(json.dumps(token), token)
            expect = "either" if v is True or (field, v) in (("value", "NaN"), ("units", 5), ("positions", 5), ("op", "ZERO"),
                                                ("positions", ["1" + "0" * 30]), ("value", [1.0, 2.0, 3.0]),
                                                ("positions", {"start": 0, "stop": "1" + "0" * 30})) else "error"
            if (field == "value" and v == {"array": [[1.0] * 8] * 2, "dtype": "float32"}) or v == [True]:
                expect = "either"
            out[f"{field}-{k:02d}"] = (text, expect)
    top = {"nested": "[" * 100000, "number": "5", "string": '"abc"', "list-of-numbers": "[5]", "list-of-lists": "[[]]",
           "empty-object": "{}", "extra-key": json.dumps({**base, "extra": 1}), "empty": "", "null": "null",
           "no-value": json.dumps({"probe": PROBE, "op": "set"}), "deep-dict": '{"a":' * 3000 + "1" + "}" * 3000,
           "huge-list": json.dumps([{"probe": PROBE, "op": "zero", "positions": [k]} for k in range(3000)])}
    for label, text in top.items():
        out[f"top-{label}"] = (text, "either" if label == "huge-list" else "error")
    return out


def build_interventions(c: Corpus) -> None:
    for label, (text, expect) in intervention_texts(c).items():
        c.add(f"interventions/{label}", "intervention", "interventions", "interventions_json", None, expect=expect,
              text=text)
    files = {"valid.json": json.dumps([{"probe": PROBE, "op": "zero"}]), "not-utf8.json": b"[\xff]",
             "nested.json": "[" * 100000, "empty.json": "", "binary.json": bytes(range(256))}
    for name, data in files.items():
        rel = c.write(f"interventions/{name}", data)
        c.add(f"interventions/file-{name}", "intervention", "interventions", "load_interventions", rel,
              expect="ok" if name == "valid.json" else "error")
    for label, make in (("fifo.json", c.fifo), ("dir.json", c.mkdir), ("missing.json", lambda p: p),
                        ("devzero.json", lambda p: c.symlink(p, "/dev/zero"))):
        rel = f"interventions/{label}"
        make(rel)
        c.add(f"interventions/file-{label}", "hostile-path", "interventions", "load_interventions", rel,
              expect="error")


# -- projects ---------------------------------------------------------------------------------------


def build_projects(c: Corpus) -> None:
    model = str(c.root / "pt-zip/valid.pt")
    base = {"format": "seqscope-project", "version": 1, "model": model, "text": "abc de", "values": None,
            "interventions": [], "probe": PROBE, "units": [0], "step": 0, "pinned": []}
    fifo = str(c.root / c.fifo("projects/model-fifo.pt"))
    changes = {
        "valid": ({}, "ok"), "iv-bogus-op": ({"interventions": [{"probe": PROBE, "op": "bogus"}]}, "error"),
        "iv-not-list": ({"interventions": 5}, "error"),
        "iv-position-1e999": ({"interventions": "RAW"}, "error"),
        "pinned-not-list": ({"pinned": 5}, "error"), "pinned-ints": ({"pinned": [5]}, "error"),
        "values-strings": ({"text": None, "values": [["a"]]}, "error"), "step-str": ({"step": "x"}, "error"),
        "units-str": ({"units": "x"}, "error"), "text-int": ({"text": 5}, "error"),
        "model-devzero": ({"model": "/dev/zero"}, "error"), "model-fifo": ({"model": fifo}, "error"),
        "model-missing": ({"model": str(c.root / "nope.pt")}, "error"), "model-int": ({"model": 5}, "error"),
        "format-missing": ({"format": None}, "error"),
    }
    for label, (change, expect) in changes.items():
        data = {**base, **change}
        text = json.dumps(data)
        if change.get("interventions") == "RAW":
            text = text.replace('"RAW"', '[{"probe": "%s", "op": "zero", "positions": [1e999]}]' % PROBE)
        rel = c.write(f"projects/{label}.seqscope.json", text)
        c.add(f"project/{label}", "project", "project", "project", rel, expect=expect)
    for label, make in (("nested", lambda p: c.write(p, "[" * 100000)), ("not-utf8", lambda p: c.write(p, b"{\xff}")),
                        ("fifo", c.fifo), ("dir", c.mkdir), ("missing", lambda p: p),
                        ("devzero", lambda p: c.symlink(p, "/dev/zero"))):
        rel = f"projects/file-{label}.seqscope.json"
        make(rel)
        c.add(f"project/file-{label}", "hostile-path", "project", "project", rel, expect="error")


# -- hostile output paths ---------------------------------------------------------------------------

OUTPUT_ENTRIES = {"save_trace": ".h5", "save_model": ".safetensors", "save_interventions": ".json",
                  "cli_trace_out": ".h5", "export_lstmvis": ""}


def _device(c: Corpus, rel: str) -> str:
    """A character device like /dev/null, made here (never the system's own node)."""
    try:
        os.mknod(c.path(rel), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:  # not allowed to make device nodes: a link to one is the next best thing
        c.symlink(rel, "/dev/null")
    return rel


def build_outputs(c: Corpus) -> None:
    old = b"OLD CONTENT that must survive a failed write\n"
    for entry, suffix in OUTPUT_ENTRIES.items():
        d = f"outputs/{entry}"
        c.mkdir(d)

        def target(label, make, expect, fsize=None):
            rel = f"{d}/{label}{suffix}"
            made = make(rel)
            c.add(f"output/{entry}/{label}", "output-path", "output", entry, None, expect=expect,
                  target=made if made is not None else rel, fsize=fsize)

        if entry == "export_lstmvis":
            def old_project(rel):
                for f in ("lstm.yml", "words.dict", "states.h5"):
                    c.write(f"{rel}/{f}", old + f.encode())
            target("existing-disk-full", old_project, "error", fsize=32)
            target("existing-replaced", old_project, "ok")
            target("a-file", lambda r: c.write(r, old), "error")
        else:
            target("existing-disk-full", lambda r: c.write(r, old), "error", fsize=32)
            target("existing-replaced", lambda r: c.write(r, old), "ok")
            target("a-dir", lambda r: (c.mkdir(r), c.write(f"{r}/keep", old))[0], "error")
            target("name-243", lambda r: f"{d}/" + "n" * (243 - len(suffix)) + suffix, "ok")
            target("nul-byte", lambda r: f"{d}/nul\x00byte{suffix}", "error")
        target("device", lambda r: _device(c, r), "error")
        target("fifo", c.fifo, "error")
        target("name-300", lambda r: f"{d}/" + "x" * 300 + suffix, "error")
        target("non-utf8", lambda r: f"{d}/non-utf8-\udcff\udcfe{suffix}", "ok")
        target("parent-is-file", lambda r: c.write(f"{d}/plain-file", old) + f"/out{suffix}", "error")
        target("no-parent", lambda r: f"{d}/no/such/folder/out{suffix}", "either")


# -- command lines -------------------------------------------------------------------------------------


def build_cli(c: Corpus) -> None:
    """Command lines run in-process (``engine.cli.main``) and, for a few, as real processes.
    ``{root}`` in an argument is the corpus folder."""
    r = "{root}"
    valid = f"{r}/pt-zip/valid.pt"
    lines = {
        "info-bomb": ["info", f"{r}/pt-zip/bomb-data-pkl.pt"],
        "info-code": ["info", f"{r}/pt-zip/code-global_reduce.pt"],
        "info-nested-config-folder": ["info", f"{r}/lstm-folders/config-nested"],
        "info-rwkv-fifo-vocab": ["info", f"{r}/rwkv/fifo/model.pth"],
        "info-fifo": ["info", f"{r}/unknown/fifo.pt"],
        "info-config-nested": ["info", valid, "--config", "[" * 100000],
        "info-config-fifo": ["info", valid, "--config", f"{r}/lstm-folders/config-fifo.json"],
        "info-config-1e8-layers": ["info", valid, "--config", '{"num_layers": 100000000}'],
        "info-valid": ["info", valid],
        "trace-intervene-nested": ["trace", valid, "--text", "abc", "--intervene", "[" * 100000,
                                   "-o", f"{r}/cli-out/a.h5"],
        "trace-intervene-1e999": ["trace", valid, "--text", "abc", "--intervene",
                                  '{"probe": "layers.0.c", "op": "zero", "positions": [1e999]}', "-o", f"{r}/cli-out/b.h5"],
        "trace-intervene-units-empty": ["trace", valid, "--text", "abc", "--intervene",
                                        '{"probe": "layers.0.c", "op": "zero", "units": []}', "-o", f"{r}/cli-out/c.h5"],
        "trace-intervene-file-dir": ["trace", valid, "--text", "abc", "--intervene", f"{r}/interventions/dir.json",
                                     "-o", f"{r}/cli-out/d.h5"],
        "trace-input-fifo": ["trace", valid, "--input", f"{r}/text/fifo.txt", "-o", f"{r}/cli-out/e.h5"],
        "trace-input-binary": ["trace", valid, "--input", f"{r}/text/binary.txt", "-o", f"{r}/cli-out/f.h5"],
        "trace-input-npy-object": ["trace", valid, "--input", f"{r}/text/ids-object.npy", "-o", f"{r}/cli-out/g.h5"],
        "trace-input-npy-ids-out-of-range": ["trace", valid, "--input", f"{r}/numeric/valid.npy", "-o",
                                             f"{r}/cli-out/h.h5"],
        "trace-probes-nested": ["trace", valid, "--text", "abc", "--probes", "[" * 1000, "-o", f"{r}/cli-out/i.h5"],
        "trace-chunk-0": ["trace", valid, "--text", "abc", "--chunk", "0", "-o", f"{r}/cli-out/j.h5"],
        "trace-text-oov": ["trace", valid, "--text", "xyz\u2603", "-o", f"{r}/cli-out/k.h5"],
        "trace-valid": ["trace", valid, "--text", "abc de", "-o", f"{r}/cli-out/l.h5"],
        "export-probe-0d": ["export-lstmvis", f"{r}/traces/probe-0d.h5", f"{r}/cli-out/m"],
        "export-softlink-loop": ["export-lstmvis", f"{r}/traces/softlink-loop.h5", f"{r}/cli-out/n"],
        "export-unwritten": ["export-lstmvis", f"{r}/traces/unwritten-2Mx64.h5", f"{r}/cli-out/o"],
        "export-valid": ["export-lstmvis", f"{r}/traces/valid.h5", f"{r}/cli-out/p"],
        "export-sequence-huge": ["export-lstmvis", f"{r}/traces/valid.h5", f"{r}/cli-out/q", "--sequence",
                                 "1" + "0" * 30],
    }
    c.mkdir("cli-out")
    ok = {"info-valid", "trace-valid", "export-valid"}
    for label, argv in lines.items():
        c.add(f"cli/{label}", "cli", "cli", "cli", None, expect="ok" if label in ok else "error", argv=argv)
    for label in ("info-bomb", "trace-intervene-1e999", "export-softlink-loop"):
        argv = [a.replace("/cli-out/", "/cli-out/sub-") for a in lines[label]]
        c.add(f"cli-process/{label}", "cli", "cli", "cli_subprocess", None, expect="error", argv=argv)
