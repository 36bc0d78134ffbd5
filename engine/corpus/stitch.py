"""One corpus trace from shard files: HDF5 virtual datasets over ``name.h5.shards/NNNN.h5``.

Each shard is a complete corpus trace of consecutive sequences (:mod:`engine.corpus.tracefile`,
``/progress`` ``first_sequence`` says where it starts).  :func:`stitch` writes the file the user
named (atomically, :func:`engine.hdf5_writer.write_hdf5`):

- every per-token dataset (``/tokens/ids``, ``/tokens/text``, ``/inputs/values``, each probe,
  ``/logits``) is a virtual dataset whose rows map, in order, onto the shards' datasets
  (sources named ``./name.h5.shards/NNNN.h5``: HDF5 finds them beside the file wherever it is
  moved, together with its folder);
- ``/sequences/offsets`` and ``/sequences/names`` are real datasets (offsets moved to global
  token positions); ``/summary`` holds the shards' summaries merged (positions moved, exact);
- ``/progress`` says ``complete`` and lists the shards (attr ``shards``: JSON list of
  {file, first_sequence, sequences, tokens}).

Readers see one trace; :mod:`engine.hdf5_read` checks every source first (:mod:`engine.corpus.vds`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..hdf5_writer import write_hdf5
from .summary import Summary
from .tracefile import CorpusFileError
from .vds import source_name

PER_TOKEN = ("tokens/ids", "tokens/text", "inputs/values")


def _per_token_datasets(f) -> list[str]:
    names = json.loads(f["probes"].attrs["order"])
    out = [p for p in PER_TOKEN if p in f]
    return out + [n if n == "logits" else f"probes/{n}" for n in names]


def _copy_attrs(src, dst) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value


def stitch(target, shard_paths: list[Path], options: dict) -> Path:
    """Write the stitched trace ``target`` over ``shard_paths`` (in corpus order)."""
    import h5py

    target = Path(target)
    shards = [h5py.File(p, "r") for p in shard_paths]
    try:
        if not shards:
            raise CorpusFileError("no shards to stitch: the corpus produced no sequences")
        first = shards[0]
        rows = [int(s["progress"].attrs["tokens_done"]) for s in shards]
        starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        total = int(starts[-1])
        names = json.loads(first["probes"].attrs["order"])

        def fill(f, check):
            _copy_attrs(first, f)
            f.attrs["notes"] = json.dumps([n for s in shards for n in json.loads(s.attrs["notes"])])
            _copy_attrs(first["model"], f.create_group("model"))
            f.create_group("probes", track_order=True).attrs["order"] = json.dumps(names)
            for where in _per_token_datasets(first):
                src0 = first[where]
                layout = h5py.VirtualLayout(shape=(total,) + src0.shape[1:], dtype=src0.dtype)
                for k, (s, path) in enumerate(zip(shards, shard_paths)):
                    if rows[k]:
                        layout[starts[k]:starts[k + 1]] = h5py.VirtualSource(
                            source_name(target, Path(path)), where, shape=(rows[k],) + src0.shape[1:])
                ds = f.create_virtual_dataset(where, layout)
                _copy_attrs(src0, ds)
                check()
            seqs = f.create_group("sequences")
            offsets = [np.zeros(1, np.int64)] + [s["sequences/offsets"][1:] + starts[k] for k, s in enumerate(shards)]
            seqs.create_dataset("offsets", data=np.concatenate(offsets))
            seqs.create_dataset("names", data=np.concatenate([s["sequences/names"][()] for s in shards]),
                                dtype=h5py.string_dtype("utf-8"))
            summary = f.create_group("summary")
            _copy_attrs(first["summary"], summary)
            for name in first["summary"]:
                merged = None
                for k, s in enumerate(shards):
                    part = Summary.read(s["summary"][name]).shifted(int(starts[k]))
                    merged = part if merged is None else merged.merge(part)
                merged.write(summary, name)
                check()
            shard_list = [{"file": Path(p).name, "first_sequence": int(s["progress"].attrs["first_sequence"]),
                           "sequences": int(s["progress"].attrs["sequences_done"]), "tokens": rows[k]}
                          for k, (s, p) in enumerate(zip(shards, shard_paths))]
            f.create_group("progress").attrs.update({
                "sequences_done": sum(x["sequences"] for x in shard_list), "tokens_done": total, "complete": 1,
                "first_sequence": 0, "options": json.dumps(options, sort_keys=True), "shards": json.dumps(shard_list),
                "nul_characters": sum(int(s["progress"].attrs.get("nul_characters", 0)) for s in shards)})

        return write_hdf5(target, fill, "corpus trace", CorpusFileError)
    finally:
        for s in shards:
            s.close()


__all__ = ["stitch"]
