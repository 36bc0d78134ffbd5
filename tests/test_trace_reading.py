"""The trace reader checks every object before reading it: broken, lying or hostile trace files
give one LoadError sentence, never a traceback, a hang or a huge allocation.  Named cases from a
bad-input campaign, then property tests (hypothesis) over mutations of a valid small trace."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError
from engine.hdf5 import TraceFileError, export_lstmvis, load_trace, save_trace
from engine.hdf5_read import TraceLoadError
from engine.models.stack import RecurrentStack, StackConfig
from engine.tokenizers import CharVocab

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
V, E, H = 7, 4, 5


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    torch.manual_seed(0)
    emb, rnn, head = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, 1), torch.nn.Linear(H, V)
    w = {"embed.weight": emb.weight, "head.weight": head.weight, "head.bias": head.bias}
    w.update({"rnn." + k: v for k, v in rnn.state_dict().items()})
    model = RecurrentStack(StackConfig("lstm", 1, H, E, vocab_size=V, output_size=V), w,
                           tokenizer=CharVocab(list("abc\n é\x00")))
    tr = engine.run(model, ["abc\n", "é\x00ab"], probes=["layers.0.h", "layers.0.c", "logits"],
                    interventions=[engine.Intervention("layers.0.c", "add", 0.5, positions=[1], units=[2])])
    path = tmp_path_factory.mktemp("good") / "good.h5"
    save_trace(tr, path)
    return path


def copy(good_file, tmp_path, name="t.h5"):
    out = tmp_path / name
    shutil.copyfile(good_file, out)
    return out


def refused(path, message):
    with pytest.raises(TraceLoadError, match=message) as info:
        load_trace(path)
    assert isinstance(info.value, LoadError) and isinstance(info.value, TraceFileError)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text and len(text) < 400, text
    return text


def test_the_good_file_reads_back(good_file):
    tr = load_trace(good_file)
    assert tr.n_sequences == 2 and tr.probes == ["layers.0.h", "layers.0.c", "logits"]
    assert tr.text(1) == "é\x00ab" and tr.interventions[0].units == (2,)


def edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def replace(f, name, **kwargs):
    attrs = dict(f[name].attrs)
    del f[name]
    ds = f.create_dataset(name, **kwargs)
    for k, v in attrs.items():
        ds.attrs[k] = v


@pytest.mark.parametrize("mutate,message", [
    (lambda f: replace(f, "probes/layers.0.h", data=1.5), "probes/layers.0.h has 0 dimension"),
    (lambda f: replace(f, "probes/layers.0.h", data=np.array([["a"] * H] * 8, dtype=object),
                       dtype=h5py.string_dtype()), "probes/layers.0.h should hold floating-point numbers"),
    (lambda f: replace(f, "probes/layers.0.h", data=np.zeros((8, H), np.int16)), "should hold floating-point"),
    (lambda f: replace(f, "probes/layers.0.h", data=np.zeros((3, H), np.float32)), "has 3 rows for 8 tokens"),
    (lambda f: replace(f, "probes/layers.0.h", data=np.zeros((8, H + 1), np.float32)),
     "says its shape is \\[5\\] but its data is \\(6,\\)"),
    (lambda f: replace(f, "tokens/ids", data=np.zeros((8, 2), np.int32)), "tokens/ids has 2 dimension"),
    (lambda f: replace(f, "tokens/ids", data=np.zeros(8, np.float32)), "tokens/ids should hold integers"),
    (lambda f: replace(f, "tokens/ids", data=np.full(8, -5, np.int64)), "ids outside"),
    (lambda f: replace(f, "sequences/offsets", data=np.array([0, 6, 4, 8])), "do not cut the 8 tokens"),
    (lambda f: replace(f, "sequences/offsets", data=np.array([0, 4, 9])), "do not cut the 8 tokens"),
    (lambda f: replace(f, "sequences/offsets", data=np.array([1, 8])), "do not cut"),
    (lambda f: replace(f, "tokens/text", data=np.array(["a"] * 3, dtype=object), dtype=h5py.string_dtype()),
     "tokens/text should be 8 strings"),
    (lambda f: f["probes"].__setitem__("loop", h5py.SoftLink("/probes/loop"))
     or f["probes"].attrs.__setitem__("order", json.dumps(["loop"])), "probes/loop is a soft link"),
    (lambda f: f["probes"].__setitem__("ext", h5py.ExternalLink("/etc/passwd", "/x"))
     or f["probes"].attrs.__setitem__("order", json.dumps(["ext"])), "external link to another file"),
    (lambda f: f.__delitem__("tokens") or f.__setitem__("tokens", h5py.SoftLink("/model")), "tokens is a soft link"),
    (lambda f: replace(f, "probes/layers.0.h", shape=(20_000_000, 64), dtype="f4"),
     "declared 20000000 x 64 \\(5,120,000,000 bytes\\) but only 0 bytes of it were ever written"),
    (lambda f: replace(f, "probes/layers.0.h", shape=(20_000_000, 64), dtype="f4", chunks=(4096, 64),
                       compression="gzip"), "more than any compression expands to"),
    (lambda f: f.attrs.__setitem__("schema_version", "1"), "no readable schema_version"),
    (lambda f: f.attrs.__setitem__("schema_version", 2), "newer SeqScope \\(schema 2\\)"),
    (lambda f: f.attrs.__setitem__("format", np.arange(3)), "not a SeqScope trace"),
    (lambda f: f["probes/layers.0.h"].attrs.__setitem__("dims", 7), "dims. of /probes/layers.0.h should be a list of axis names, found 7"),
    (lambda f: f["probes/layers.0.h"].attrs.__setitem__("dims", ["token"]), "names its axes \\[.token.\\], which does not fit 2"),
    (lambda f: f["probes/layers.0.h"].attrs.__setitem__("layer", "zero"), "attribute 'layer' .* should be a layer"),
    (lambda f: f["probes/layers.0.h"].attrs.__setitem__("directions", 0), "has 0 directions"),
    (lambda f: f["probes"].attrs.__setitem__("order", "[" * 100_000), "order' of /probes holds JSON nested too deeply"),
    (lambda f: f["probes"].attrs.__setitem__("order", json.dumps(["/tokens/ids"])), "not a list of distinct probe"),
    (lambda f: f["probes"].attrs.__setitem__("order", json.dumps(["layers.0.h", "layers.0.h"])), "distinct"),
    (lambda f: f["probes"].attrs.__setitem__("order", json.dumps(["nope"])), "it has no probes/nope"),
    (lambda f: f["probes"].attrs.__setitem__("order", 5), "attribute 'order' of /probes should be JSON text"),
    (lambda f: f.attrs.__setitem__("interventions", json.dumps([{"probe": "layers.0.h", "op": "bogus"}])),
     "intervention 1 recorded in it is not valid \\(unknown op 'bogus'"),
    (lambda f: f.attrs.__setitem__("interventions", "{" * 100), "interventions' of / is not valid JSON"),
    (lambda f: f["model"].attrs.__setitem__("config", "[" * 100_000)
     or f["model"].attrs.__setitem__("json_encoded", '["config"]'), "config' of /model holds JSON nested too deeply"),
    (lambda f: f["model"].attrs.__setitem__("json_encoded", json.dumps({"a": 1})), "not a list of names"),
    (lambda f: f["tokens/text"].attrs.__setitem__("encoding", "rot13"), "unknown encoding 'rot13'"),
    (lambda f: f.__delitem__("model"), "it has no model"),
    (lambda f: f.__delitem__("tokens/ids") or f["tokens"].create_group("ids"), "tokens/ids is not a dataset"),
])
def test_broken_traces_are_refused_in_one_sentence(good_file, tmp_path, mutate, message):
    refused(edit(copy(good_file, tmp_path), mutate), message)


def test_virtual_and_external_storage_is_refused(good_file, tmp_path):
    path = copy(good_file, tmp_path)
    raw = tmp_path / "raw.bin"
    np.zeros((8, H), np.float32).tofile(raw)
    edit(path, lambda f: replace(f, "probes/layers.0.h", shape=(8, H), dtype="f4", external=[(str(raw), 0, 8 * H * 4)]))
    refused(path, "keeps its data in other files")
    path = copy(good_file, tmp_path, "v.h5")
    layout = h5py.VirtualLayout(shape=(8, H), dtype="f4")
    layout[:] = h5py.VirtualSource(str(good_file), "probes/layers.0.h", shape=(8, H))
    edit(path, lambda f: f["probes"].__delitem__("layers.0.h") or f["probes"].create_virtual_dataset("layers.0.h", layout))
    refused(path, "reads another file")  # only a stitched corpus's own shard files are allowed


def test_paths_that_are_not_trace_files(tmp_path):
    refused(tmp_path, "is a folder, not a trace file")
    refused(tmp_path / "none.h5", "no trace file at")
    os.mkfifo(tmp_path / "pipe.h5")  # opening it would block forever
    refused(tmp_path / "pipe.h5", "is not a regular file")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    refused(tmp_path / "junk.h5", "not HDF5, or it is damaged")


def test_lstmvis_export_reads_through_the_same_checks(good_file, tmp_path):
    path = edit(copy(good_file, tmp_path), lambda f: f["sequences/offsets"].__setitem__(0, 3))
    with pytest.raises(LoadError, match="do not cut"):
        export_lstmvis(path, tmp_path / "vis")
    assert not (tmp_path / "vis").exists()


# -- property tests -------------------------------------------------------------------------

OBJECTS = ["/", "model", "tokens/ids", "tokens/text", "sequences/offsets", "probes", "probes/layers.0.h",
           "probes/layers.0.c", "logits"]
ATTRS = ["format", "schema_version", "created", "interventions", "order", "dims", "shape", "layer", "directions",
         "name", "site", "encoding", "json_encoded", "config", "architecture", "parameter_count"]
attr_values = (st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=True) | st.text(max_size=12)
               | st.sampled_from(["[" * 5000, '{"a": ' * 3000, "[]", "{}", "null", "[1, 2]", '["layers.0.h"]',
                                  json.dumps([{"probe": "layers.0.h", "op": "zero", "units": []}]), "utf-8",
                                  "unicode_escape", "seqscope-trace", "1"])
               | st.lists(st.integers(-5, 10), min_size=1, max_size=4).map(np.array)
               | st.lists(st.text(max_size=4), min_size=1, max_size=3))
datasets = st.tuples(st.sampled_from(["f4", "f2", "f8", "i4", "u1", "i8"]),
                     st.lists(st.integers(0, 9), min_size=0, max_size=3))


@st.composite
def mutations(draw):
    """A short list of h5py-level edits: attributes set or deleted, objects deleted, datasets
    replaced by others of any dtype and shape, links in place of objects."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set_attr", "del_attr", "del_obj", "replace", "link"]))
        obj = draw(st.sampled_from(OBJECTS))
        if kind == "set_attr":
            out.append((kind, obj, draw(st.sampled_from(ATTRS)), draw(attr_values)))
        elif kind == "del_attr":
            out.append((kind, obj, draw(st.sampled_from(ATTRS)), None))
        elif kind == "replace":
            out.append((kind, obj, None, draw(datasets)))
        elif kind == "link":
            out.append((kind, obj, None, draw(st.sampled_from(OBJECTS))))
        else:
            out.append((kind, obj, None, None))
    return out


def apply_mutation(f, kind, obj, attr, value):
    if obj != "/" and obj not in f:
        return
    node = f[obj]
    if kind == "set_attr":
        node.attrs[attr] = value
    elif kind == "del_attr" and attr in node.attrs:
        del node.attrs[attr]
    elif obj == "/":
        return
    elif kind == "del_obj":
        del f[obj]
    elif kind == "replace":
        dtype, shape = value
        del f[obj]
        f.create_dataset(obj, data=np.ones(shape, dtype=dtype))
    elif kind == "link":
        del f[obj]
        f[obj] = h5py.SoftLink("/" + value.strip("/"))


def load_or_refuse(path):
    try:
        tr = load_trace(path)
    except TraceLoadError as exc:
        assert isinstance(exc, LoadError)
        text = str(exc)
        assert text and "\n" not in text and len(text) < 400, text
        return None
    assert isinstance(tr, engine.Trace)
    return tr


@settings(max_examples=150, **SETTINGS)
@given(mutations())
def test_h5py_level_mutations_give_a_trace_or_a_load_error(good_file, tmp_path_factory, edits):
    path = copy(good_file, tmp_path_factory.mktemp("m"))
    with h5py.File(path, "a") as f:
        for e in edits:
            try:
                apply_mutation(f, *e)
            except (TypeError, ValueError, KeyError, OSError, RuntimeError):
                pass  # h5py refused to write this edit: the file keeps the others
    load_or_refuse(path)


@settings(max_examples=60, **SETTINGS)
@given(st.floats(0, 1, exclude_max=True))
def test_a_truncated_trace_gives_a_load_error(good_file, tmp_path_factory, fraction):
    data = good_file.read_bytes()
    path = tmp_path_factory.mktemp("t") / "t.h5"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert load_or_refuse(path) is None


WORKER = textwrap.dedent("""
    import signal
    import sys
    from engine.hdf5 import load_trace
    from engine.hdf5_read import TraceLoadError
    for line in sys.stdin:
        path = line.strip()
        signal.alarm(5)  # no handler: a read stalled inside libhdf5 ends the worker, and the test goes on
        try:
            load_trace(path)
            print("ok", flush=True)
        except TraceLoadError:
            print("load", flush=True)
        except BaseException as exc:
            print("ESCAPE", path, type(exc).__name__, str(exc)[:200].replace("\\n", " "), flush=True)
""")


def test_bit_flips_give_a_trace_or_a_load_error(good_file, tmp_path):
    """Random bit flips anywhere in the file (a fixed seed), read by a worker process: a flip
    in HDF5's own metadata can crash or stall libhdf5 itself (C code, below anything Python
    can check), and that must not take the test run with it.  Asserted: no exception other
    than TraceLoadError ever comes out of load_trace."""
    rng = np.random.default_rng(7)
    data = np.frombuffer(good_file.read_bytes(), np.uint8)
    paths = []
    for k in range(80):
        b = data.copy()
        for i in rng.integers(0, len(b), size=rng.integers(1, 6)):
            b[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
        paths.append(tmp_path / f"flip{k}.h5")
        paths[-1].write_bytes(b.tobytes())
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(engine.__file__)))
    outcomes, todo, stalls = [], list(paths), 0
    while todo:
        proc = subprocess.run([sys.executable, "-c", WORKER], input="\n".join(map(str, todo)) + "\n", text=True,
                              capture_output=True, env=env, timeout=600)
        lines = proc.stdout.splitlines()
        outcomes += lines
        if len(lines) >= len(todo):
            break
        stalls += 1  # libhdf5 crashed or stalled on the next file: record it and go on after it
        outcomes.append(f"crashed {todo[len(lines)]}")
        todo = todo[len(lines) + 1:]
    print(f"bit flips: {sum(o == 'ok' for o in outcomes)} read, {sum(o == 'load' for o in outcomes)} refused, "
          f"{stalls} crashed or stalled inside libhdf5")
    escapes = [o for o in outcomes if o.startswith("ESCAPE")]
    assert not escapes, escapes
    assert sum(o == "load" for o in outcomes) > 10 and sum(o == "ok" for o in outcomes) > 0
