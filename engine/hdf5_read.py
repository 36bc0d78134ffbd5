"""Reading trace files (the layout is in :mod:`engine.hdf5`): every object is checked before it
is read, so that a damaged or hostile file gives one sentence (a :class:`TraceLoadError`, which
is a ``LoadError``) and never a traceback, a hang or a huge allocation.

What is checked, and why:

- only a regular file is opened (a named pipe would block forever);
- every object is reached through hard links only: a soft link can loop, an external link
  reads another file (or a device), and the writer never makes either;
- every dataset has the dtype, rank and length its place in the layout calls for (a probe of
  strings, a 0-d probe, 2-D token ids, offsets that do not cut the tokens into sequences);
- a dataset's declared size is compared with the bytes the file holds for it before it is
  read: an HDF5 file of a few kilobytes can declare a 20M x 64 dataset that was never
  written, and reading it would allocate 5 GB of fill values;
- attributes have the types the writer gives them, and JSON in attributes is parsed with its
  nesting bounded;
- external raw storage (data in other files) is refused, and so are virtual datasets except a
  stitched corpus trace's, onto its own complete shard files (:mod:`engine.corpus.vds`).
"""
from __future__ import annotations

import json
import math
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import LoadError
from .hdf5 import FORMAT, SCHEMA_VERSION, TraceFileError
from .intervention_fields import describe
from .interventions import Intervention, InterventionError
from .probes import ProbeSpec
from .trace import Trace

MAX_COMPRESSION = 1100  # gzip cannot shrink data more than about 1032:1 (deflate's limit)
MAX_ATTR_CHARS = 64 * 2**20  # a JSON attribute
_DAMAGE = (KeyError, OSError, ValueError, TypeError, RuntimeError, IndexError, OverflowError, RecursionError,
           AttributeError, InterventionError)  # how h5py refuses a damaged structure


class TraceLoadError(TraceFileError, LoadError):
    """A trace file that cannot be read: missing, not HDF5, damaged, or not what it claims."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _open(path: Path):
    import h5py

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TraceLoadError(f"no trace file at {path}") from None
    except OSError as exc:
        raise TraceLoadError(f"cannot read trace file {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise TraceLoadError(f"{path} is a folder, not a trace file")
    if not stat.S_ISREG(st.st_mode):
        raise TraceLoadError(f"{path} is not a regular file (a pipe or a device?); traces are read from files")
    try:
        return h5py.File(path, "r"), st.st_size
    except (OSError, ValueError, RuntimeError, TypeError):
        raise TraceLoadError(f"{path} is not a SeqScope trace file: it is not HDF5, or it is damaged "
                             f"(truncated or partly overwritten)") from None


def check_trace_file(f, path) -> None:
    """Refuse files that are not SeqScope traces or come from a newer schema."""
    fmt = _plain(f.attrs.get("format", None))
    if fmt != FORMAT:
        what = f"its format attribute is {describe(fmt)}" if fmt is not None else "it has no format attribute"
        raise TraceLoadError(f"{path} is an HDF5 file but not a SeqScope trace ({what}, expected {FORMAT!r})")
    version = _plain(f.attrs.get("schema_version", None))
    if not isinstance(version, int) or isinstance(version, bool):
        raise TraceLoadError(f"{path} has no readable schema_version (found {describe(version)}); it is damaged")
    if version > SCHEMA_VERSION:
        from .hdf5 import _version

        written_by = _plain(f.attrs.get("seqscope_version", "?"))
        raise TraceLoadError(
            f"{path} was written by a newer SeqScope (schema {version}); this version reads schema "
            f"{SCHEMA_VERSION} — upgrade SeqScope (the file comes from SeqScope "
            f"{written_by if isinstance(written_by, str) else '?'}; this is {_version()})")
    if version < 1:
        raise TraceLoadError(f"{path} has an invalid schema_version {version}")


def load_trace(path) -> Trace:
    """Read a trace file written by :func:`engine.hdf5.save_trace`; anything wrong with it is a
    :class:`TraceLoadError` that says what, in one sentence."""
    with trace_reader(path) as reader:
        return reader.trace()


@contextmanager
def trace_reader(path):
    """A checked reader of the trace file at ``path`` (open while the ``with`` lasts), for reading
    parts of it (:mod:`engine.initial_state_files` reads only its states); damage is a
    :class:`TraceLoadError` as in :func:`load_trace`."""
    path = Path(path)
    f, size = _open(path)
    try:
        with f:
            check_trace_file(f, path)
            yield _Reader(f, path, size)
    except TraceLoadError:
        raise
    except _DAMAGE as exc:  # h5py's own refusals of damaged structures
        raise TraceLoadError(f"{path} is a SeqScope trace but could not be read (damaged?): "
                             f"{_first_line(exc)}") from None


def _plain(v):
    """An HDF5 attribute value as a plain Python value (bytes decoded, arrays as lists)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.dtype.kind != "O" else [_plain(x) for x in v.ravel()]
    if isinstance(v, np.generic):
        return v.item()
    return v


class _Reader:
    def __init__(self, f, path: Path, file_size: int):
        self.f, self.path, self.file_size = f, path, file_size

    def fail(self, what: str):
        raise TraceLoadError(f"{self.path} is a damaged trace: {what}")

    # -- objects -------------------------------------------------------------------------
    def obj(self, where: str, kind: str, *, optional: bool = False):
        """The group or dataset at ``where``, reached through hard links only."""
        import h5py

        node, walked = self.f, ""
        for part in where.strip("/").split("/"):
            walked = f"{walked}/{part}" if walked else part
            if not isinstance(node, h5py.Group):
                self.fail(f"{walked.rsplit('/', 1)[0]} is not a group")
            link = node.get(part, getlink=True)
            if link is None:
                if optional:
                    return None
                self.fail(f"it has no {where}")
            if not isinstance(link, h5py.HardLink):
                kind_of = "an external link to another file" if isinstance(link, h5py.ExternalLink) else "a soft link"
                self.fail(f"{walked} is {kind_of}; trace files hold their own data and never link")
            node = node[part]
        expected = h5py.Group if kind == "group" else h5py.Dataset
        if not isinstance(node, expected):
            self.fail(f"{where} is not a {kind}")
        return node

    def attr(self, node, name: str, types, default=None, what: str | None = None):
        if name not in node.attrs:
            return default
        try:
            value = _plain(node.attrs[name])
        except (OSError, TypeError, ValueError, UnicodeDecodeError):
            self.fail(f"attribute {name!r} of {node.name} cannot be read")
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
            self.fail(f"attribute {name!r} of {node.name} should be {what or _type_words(types)}, "
                      f"found {describe(value)}")
        return value

    def json_attr(self, node, name: str, default):
        text = self.attr(node, name, str, None, "JSON text")
        if text is None:
            return default
        if len(text) > MAX_ATTR_CHARS:
            self.fail(f"attribute {name!r} of {node.name} is {len(text):,} characters long")
        try:
            return json.loads(text)
        except RecursionError:
            self.fail(f"attribute {name!r} of {node.name} holds JSON nested too deeply")
        except ValueError:
            self.fail(f"attribute {name!r} of {node.name} is not valid JSON")

    def array(self, where: str, kinds: str, ndims, rows: int | None = None, *, optional: bool = False):
        """Read a dataset after checking its dtype, rank, length and stored size."""
        ds = self.obj(where, "dataset", optional=optional)
        if ds is None:
            return None
        words = {"f": "floating-point numbers", "iu": "integers"}.get(kinds, "numbers")
        if ds.dtype.kind not in kinds or ds.dtype.fields is not None or ds.dtype.itemsize > 8:
            self.fail(f"{where} should hold {words} but holds {ds.dtype}")
        if ds.ndim not in ndims:
            self.fail(f"{where} has {ds.ndim} dimension(s) {tuple(ds.shape)}, expected "
                      f"{' or '.join(str(n) for n in ndims)}")
        self.check_stored(ds, where)
        if rows is not None and ds.shape[0] != rows:
            self.fail(f"{where} has {ds.shape[0]} rows for {rows} tokens")
        data = ds[...]
        return data if data.dtype.isnative else data.astype(data.dtype.newbyteorder("="))

    def check_stored(self, ds, where: str) -> None:
        """A dataset's declared size against the bytes the file holds for it."""
        if ds.external:
            self.fail(f"{where} keeps its data in other files (external storage)")
        if ds.is_virtual:  # a stitched corpus trace: only its own shard files, all present (engine/corpus/vds.py)
            from .corpus.vds import virtual_problem

            problem = virtual_problem(ds, self.path)
            if problem:
                self.fail(f"{where} {problem}")
            return
        declared = math.prod(int(n) for n in ds.shape) * ds.dtype.itemsize
        if declared == 0:
            return
        stored = ds.id.get_storage_size()
        filtered = ds.id.get_create_plist().get_nfilters() > 0
        shape = " x ".join(str(n) for n in ds.shape)
        if stored > self.file_size:
            self.fail(f"{where} claims {stored:,} bytes of data in a file of {self.file_size:,} bytes")
        if not filtered and stored < declared:
            self.fail(f"{where} is declared {shape} ({declared:,} bytes) but only {stored:,} bytes of it were "
                      f"ever written")
        if filtered and declared > stored * MAX_COMPRESSION:
            self.fail(f"{where} is declared {shape} ({declared:,} bytes) but holds only {stored:,} compressed "
                      f"bytes, more than any compression expands to")

    def check_string_lengths(self, ds, where: str) -> None:
        """Variable-length strings are stored as (length, heap address, index) records that
        libhdf5 follows without bounds: a record whose length or address lies past the end of
        the file would make it allocate gigabytes or read wild memory.  For a contiguous
        dataset (what the writer makes) the records are read and checked first."""
        import h5py

        info = h5py.check_string_dtype(ds.dtype)
        offset = ds.id.get_offset()
        if info is None or info.length is not None or offset is None or not ds.shape[0]:
            return
        addr = self.f.id.get_create_plist().get_sizes()[0]
        record = np.dtype([("length", "<u4"), ("address", f"<u{addr}"), ("index", "<u4")]) if addr in (2, 4, 8) \
            else None
        if record is None or offset + record.itemsize * ds.shape[0] > self.file_size:
            self.fail(f"{where} points past the end of the file")
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            records = np.frombuffer(fh.read(record.itemsize * ds.shape[0]), dtype=record)
        if np.any(records["length"] > self.file_size) or np.any(records["address"] >= self.file_size):
            self.fail(f"{where} holds a string that points past the end of the file")

    # -- the parts of a trace ------------------------------------------------------------------
    def model_info(self) -> dict:
        model = self.obj("model", "group")
        encoded = self.json_attr(model, "json_encoded", [])
        if not isinstance(encoded, list) or not all(isinstance(k, str) for k in encoded):
            self.fail("attribute 'json_encoded' of /model is not a list of names")
        info = {}
        for key in model.attrs:
            if key == "json_encoded":
                continue
            if key in encoded:
                info[key] = self.json_attr(model, key, None)
            else:
                info[key] = self.attr(model, key, (str, int, float, list), what="a string or a number")
        return info

    def tokens(self):
        ids = self.array("tokens/ids", "iu", (1,))
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
            self.fail(f"tokens/ids holds ids outside 0..{np.iinfo(np.int32).max}")
        n = len(ids)
        text = None
        ds = self.obj("tokens/text", "dataset", optional=True)
        if ds is not None:
            import h5py

            if h5py.check_string_dtype(ds.dtype) is None or ds.ndim != 1 or ds.shape[0] != n:
                self.fail(f"tokens/text should be {n} strings, found {ds.dtype} {tuple(ds.shape)}")
            self.check_stored(ds, "tokens/text")
            self.check_string_lengths(ds, "tokens/text")
            try:
                text = ds.asstr()[...].tolist()
            except UnicodeDecodeError:
                self.fail("tokens/text is not UTF-8 text")
            encoding = self.attr(ds, "encoding", str, None)
            text = self.decode_texts(text, encoding)
        offsets = self.array("sequences/offsets", "iu", (1,))
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets.astype(np.int64)) < 0):
            self.fail(f"sequences/offsets {describe(offsets.tolist())} do not cut the {n} tokens into sequences "
                      f"(they must start at 0, never decrease and end at {n})")
        return ids.astype(np.int32), text, offsets.astype(np.int64)

    def decode_texts(self, texts: list[str], encoding) -> list[str]:
        if encoding in (None, "", "utf-8"):
            return texts
        if encoding == "unicode_escape":
            try:
                return [s.encode("ascii").decode("unicode_escape") for s in texts]
            except UnicodeError:
                self.fail("tokens/text is marked unicode_escape but is not")
        self.fail(f"tokens/text has an unknown encoding {describe(encoding)}")

    def spec(self, ds, name: str) -> ProbeSpec:
        shape = self.attr(ds, "shape", (list, int), list(ds.shape[1:]), "a list of sizes")
        shape = [shape] if isinstance(shape, int) else shape
        if tuple(shape) != tuple(ds.shape[1:]):
            self.fail(f"probe {name} says its shape is {describe(shape)} but its data is {tuple(ds.shape[1:])}")
        default_dims = ["token"] + [f"dim{k}" for k in range(1, ds.ndim)]
        dims = self.attr(ds, "dims", (list, str), default_dims, "a list of axis names")
        dims = [dims] if isinstance(dims, str) else dims
        if len(dims) != ds.ndim or not all(isinstance(d, str) for d in dims):
            self.fail(f"probe {name} names its axes {describe(dims)}, which does not fit {ds.ndim} axes")
        layer = self.attr(ds, "layer", int, -1, "a layer number")
        directions = self.attr(ds, "directions", int, 1, "a number of directions")
        if directions < 1 or directions > 2 ** 16:
            self.fail(f"probe {name} has {directions} directions")
        return ProbeSpec(name=self.attr(ds, "name", str, name), shape=tuple(int(n) for n in shape), dims=tuple(dims),
                         description=self.attr(ds, "description", str, ""), layer=None if layer < 0 else layer,
                         site=self.attr(ds, "site", str, ""), directions=directions)

    def probes(self, n: int):
        group = self.obj("probes", "group", optional=True)
        if group is not None:
            order = self.json_attr(group, "order", None)
            if order is None:
                order = list(group)
                if self.obj("logits", "dataset", optional=True) is not None:
                    order.append("logits")
        else:
            order = ["logits"] if self.obj("logits", "dataset", optional=True) is not None else []
        if not isinstance(order, list) or not all(isinstance(x, str) and x and "/" not in x for x in order) \
                or len(set(order)) != len(order):
            self.fail(f"attribute 'order' of /probes is not a list of distinct probe names: {describe(order)}")
        arrays, specs = {}, {}
        for name in order:
            where = "logits" if name == "logits" else f"probes/{name}"
            arrays[name] = self.array(where, "f", range(1, 9), rows=n)
            specs[name] = self.spec(self.obj(where, "dataset"), name)
        return arrays, specs

    def interventions(self) -> tuple[Intervention, ...]:
        data = self.json_attr(self.f, "interventions", [])
        if not isinstance(data, list):
            self.fail(f"its interventions attribute is not a list: {describe(data)}")
        out = []
        for k, d in enumerate(data):
            try:
                out.append(Intervention.from_dict(d))
            except InterventionError as exc:
                self.fail(f"intervention {k + 1} recorded in it is not valid ({exc})")
        return tuple(out)

    def notes(self) -> tuple[str, ...]:
        data = self.json_attr(self.f, "notes", [])  # absent in files from before notes
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            self.fail(f"its notes attribute is not a list of sentences: {describe(data)}")
        return tuple(data)

    def trace(self) -> Trace:
        info = self.model_info()
        tokens, text, offsets = self.tokens()
        n = len(tokens)
        inputs = self.array("inputs/values", "f", (2,), rows=n, optional=True) \
            if self.obj("inputs", "group", optional=True) is not None else None
        arrays, specs = self.probes(n)
        created = self.attr(self.f, "created", str, "", "a date")
        states = {which: self.state(which, len(offsets) - 1) for which in ("initial_state", "final_state")}
        return Trace(tokens=tokens, offsets=offsets, arrays=arrays, specs=specs, token_text=text, inputs=inputs,
                     model_info=info, interventions=self.interventions(), created=created, notes=self.notes(),
                     **states)

    def state(self, which: str, n_sequences: int):
        """``/initial_state`` or ``/final_state``: ``{name: [sequences, *shape]}``, or None."""
        group = self.obj(which, "group", optional=True)
        if group is None:
            return None
        out = {}
        for name in group:
            if "/" in name or not name:
                self.fail(f"/{which} holds an entry with a bad name")
            arr = self.array(f"{which}/{name}", "f", (2, 3, 4, 5))
            if arr.shape[0] != n_sequences:
                self.fail(f"/{which}/{name} has {arr.shape[0]} rows for {n_sequences} sequences")
            out[name] = arr
        return out


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _type_words(types) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", list: "a list"}
    return " or ".join(names.get(t, t.__name__) for t in _as_tuple(types))
