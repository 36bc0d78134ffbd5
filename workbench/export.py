"""Exports: a view to PNG or SVG at full resolution, the selected units to CSV.  (Trace files go
through ``engine.save_trace`` in the runner; dialogs live in the main window.)"""
from __future__ import annotations

import contextlib
import csv
import importlib
import io
import re
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import pyqtgraph.exporters  # noqa: F401  (registers the exporters)

from engine.atomic import replacing, write_text
from engine.errors import SeqScopeError

# the module, not the class of the same name that pyqtgraph.exporters exposes
_svg_module = importlib.import_module("pyqtgraph.exporters.SVGExporter")


class ExportError(SeqScopeError):
    """An export that could not be written; nothing was left under the target name, and an old
    file there is unchanged (exports go through :mod:`engine.atomic`)."""


@contextlib.contextmanager
def _closed_paths_fixed():
    """pyqtgraph 0.14's SVG exporter fails on closed paths under Qt 6.12: their ``d`` strings
    end in ``Z``, which it tries to split into coordinates.  While exporting, replace each ``Z``
    with a line back to the path's start (the same shape, stroked and filled alike)."""
    original = _svg_module.correctCoordinates

    def patched(node, defs, item, options):
        for path in node.getElementsByTagName("path"):
            d = path.getAttribute("d").strip()
            if "Z" in d or "z" in d:
                path.setAttribute("d", _close_explicitly(d))
        return original(node, defs, item, options)

    _svg_module.correctCoordinates = patched
    try:
        yield
    finally:
        _svg_module.correctCoordinates = original


def _close_explicitly(d: str) -> str:
    out, start = [], None
    for token in d.split():
        if token in ("Z", "z"):
            if start is not None:
                out.append("L" + start)
            continue
        if token[-1] in "Zz":  # "L1,2Z"
            token = token[:-1]
            out.append(token)
            if start is not None:
                out.append("L" + start)
            continue
        if token.startswith("M"):
            start = token[1:]
        out.append(token)
    return " ".join(out)


def export_view(view, path, width: int | None = None) -> Path:
    """Write a view to ``path`` (.png or .svg).  pyqtgraph views render their plot at full
    resolution (images are never downsampled in exports); other views are grabbed as shown."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ExportError(f"{path.name}: export to .png or .svg")
    getattr(view, "flush", lambda: None)()  # a view hidden behind a tab brings itself up to date
    plot_item = getattr(view, "plot_item", None)
    with replacing(path, "image", suffix=suffix, error=ExportError) as tmp:
        if plot_item is None:
            if suffix == ".svg":
                raise ExportError("this view is not a plot: export it as PNG")
            if not view.grab().save(str(tmp), "PNG"):
                raise ExportError(f"could not write {path}")
        else:
            images = [i for i in plot_item.items if isinstance(i, pg.ImageItem)]
            saved = [(i, i.autoDownsample) for i in images]
            for i in images:  # full resolution, not the on-screen downsampled image
                i.setAutoDownsample(False)
            try:
                if suffix == ".png":
                    exporter = pg.exporters.ImageExporter(plot_item)
                    if width:
                        exporter.parameters()["width"] = int(width)
                    exporter.export(str(tmp))
                else:
                    with _closed_paths_fixed():
                        pg.exporters.SVGExporter(plot_item).export(str(tmp))
            finally:
                for i, auto in saved:
                    i.setAutoDownsample(auto)
        if tmp.stat().st_size == 0:
            raise ExportError(f"nothing was written for {path.name}")
    return path


def export_units_csv(session, path) -> Path:
    """The selected and pinned units, one row per token: index, sequence, token text, then each
    unit's steered value (and its clean value when interventions are active)."""
    path = Path(path)
    trace = session.trace
    if trace is None:
        raise ExportError("nothing to export yet: run the model first")
    columns = [(session.probe, u) for u in session.units] + [p for p in session.pinned]
    seen, unique = set(), []
    for c in columns:
        if c not in seen and c[0] in trace.arrays:
            seen.add(c)
            unique.append(c)
    seq = np.repeat(np.arange(trace.n_sequences), np.diff(trace.offsets))
    header = ["token", "sequence", "text"]
    cols = []
    for probe, unit in unique:
        a = trace[probe].reshape(trace.n_tokens, -1)
        header.append(f"{probe}[{unit}]")
        cols.append(a[:, unit])
        if session.interventions and session.clean_trace is not None:
            header.append(f"{probe}[{unit}] clean")
            cols.append(session.clean_trace[probe].reshape(trace.n_tokens, -1)[:, unit])
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(header)
    for t in range(trace.n_tokens):
        text = trace.token_text[t] if trace.token_text is not None else ""
        w.writerow([t, int(seq[t]), text] + [f"{c[t]:.9g}" for c in cols])
    write_text(path, out.getvalue(), "CSV file", ExportError)
    return path


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
