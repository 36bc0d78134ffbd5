"""Checking the virtual datasets of a stitched corpus trace before they are read.

A corpus recorded by several workers (:mod:`engine.corpus.scale_out`) is one file ``name.h5``
whose per-token datasets are HDF5 virtual datasets mapping rows onto the shard files
``name.h5.shards/NNNN.h5``.  HDF5 reads a missing source file as fill values, silently; so a
reader (:mod:`engine.hdf5_read`) asks :func:`virtual_problem` first, which accepts only
sources that are regular files in one ``*.shards`` folder beside the trace (named relative
to it: no absolute paths, no ``..``; the folder keeps its name when the trace is renamed), holding a dataset of the same type whose stored bytes cover
what is mapped, and mappings that cover every row of the virtual dataset.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

SHARDS_SUFFIX = ".shards"


def shards_folder(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SHARDS_SUFFIX)


def source_name(path, shard: Path) -> str:
    """How a virtual dataset names a shard: relative to the trace's folder (HDF5 looks there)."""
    return "./" + shards_folder(Path(path).name).name + "/" + shard.name


def virtual_problem(ds, trace_path) -> str | None:
    """What is wrong with the virtual dataset ``ds`` of the trace file at ``trace_path``, in
    words (completing "<dataset> ..."), or None when every source is in place."""
    import h5py

    trace_path = Path(trace_path)
    folder = shards_folder(trace_path).name
    accepted = None  # a renamed trace keeps the shard folder it was written with
    mapped = 0
    opened: dict[str, object] = {}
    try:
        for vmap in ds.virtual_sources():
            name = vmap.file_name
            parts = Path(name).parts
            if len(parts) == 3 and parts[0] == ".":
                parts = parts[1:]
            if len(parts) != 2 or not parts[0].endswith(SHARDS_SUFFIX) or parts[1] in ("..", ".") \
                    or parts[0] != (accepted or parts[0]):
                return f"reads another file ({name!r}); only its own {folder}/ shard files are allowed"
            accepted = parts[0]
            src_path = trace_path.parent / parts[0] / parts[1]
            try:
                st = os.stat(src_path)
            except OSError:
                return f"needs the shard file {parts[0]}/{parts[1]}, which is missing; keep the {folder} folder " \
                       f"beside the trace (or record again with --resume)"
            if not stat.S_ISREG(st.st_mode):
                return f"reads {parts[0]}/{parts[1]}, which is not a regular file"
            key = str(src_path)
            if key not in opened:
                opened[key] = h5py.File(src_path, "r")
            src = opened[key].get(vmap.dset_name, getlink=True)
            if not isinstance(src, h5py.HardLink):
                return f"reads {vmap.dset_name} of {parts[1]}, which that file does not hold"
            src = opened[key][vmap.dset_name]
            if not isinstance(src, h5py.Dataset) or src.dtype != ds.dtype or src.is_virtual or src.external:
                return f"reads {vmap.dset_name} of {parts[1]}, which is not a plain {ds.dtype} dataset"
            declared = math.prod(src.shape) * src.dtype.itemsize
            filtered = src.id.get_create_plist().get_nfilters() > 0
            if declared and not filtered and src.id.get_storage_size() < declared:
                return f"reads {vmap.dset_name} of {parts[1]}, which was never completely written"
            if src.id.get_storage_size() > st.st_size:
                return f"reads {vmap.dset_name} of {parts[1]}, which claims more bytes than the file holds"
            if vmap.src_space.get_select_npoints() > math.prod(src.shape):
                return f"maps more of {parts[1]} than it holds"
            mapped += vmap.vspace.get_select_npoints()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has shard files that cannot be read ({str(exc).splitlines()[0][:120] if str(exc) else 'damaged'})"
    finally:
        for f in opened.values():
            f.close()
    if mapped != math.prod(ds.shape):
        return f"maps {mapped:,} of its {math.prod(ds.shape):,} values to shard files; the rest would read as blanks"
    return None


__all__ = ["virtual_problem", "shards_folder", "source_name", "SHARDS_SUFFIX"]
