"""The example models bundled in ``assets/models``: where each one's weights and sample inputs
are, and what the window first shows of each.  One place for the app's default, the File ▸ Open
example menu, the input editor's sample list and the first view of a model.

What a model opens on is data, not code: a ``look_at.json`` beside the weights (each bundled
model has one, taken from its card's "What to look at")::

    {"probe": "layers.0.h", "units": [121], "step": 120, "view": "Text", "why": "..."}

``units``, ``step``, ``view`` (a dock title to raise) and ``attention_weighted`` (tick the
attention view's output weighting) are optional.  A model without one opens on its first layer's
main state and the unit that varies most over the input (see ``Session.set_model``).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_EXAMPLE = "char-lstm-python"


def bundled_models_folder() -> Path:
    """Where the example models lie: ``assets/models`` beside the code (a source checkout, and
    a PyInstaller bundle, which keeps the same layout), else the installed ``seqscope_assets``
    package (a wheel maps ``assets/`` to it).  The checkout's path when neither exists."""
    beside = Path(__file__).resolve().parents[1] / "assets" / "models"
    if (beside / DEFAULT_EXAMPLE).is_dir():
        return beside
    spec = importlib.util.find_spec("seqscope_assets")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(root) / "models" / DEFAULT_EXAMPLE).is_dir():
            return Path(root) / "models"
    return beside


MODELS = bundled_models_folder()
SAMPLE_SUFFIXES = (".txt", ".py", ".npy", ".csv")
LOOK_AT_FILE = "look_at.json"
LOOK_AT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Example:
    name: str
    model: Path  # what engine.load opens: a transformers-style folder, or the weights file
    samples: tuple[Path, ...]

    @property
    def sample(self) -> Path | None:
        return self.samples[0] if self.samples else None


def example(folder: Path) -> Example | None:
    """The example in ``folder``, or None when it holds no weights."""
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.pt"))
    if not weights:
        return None
    model = folder if (folder / "config.json").is_file() else weights[0]
    samples = tuple(p for p in sorted(folder.glob("sample*")) if p.suffix in SAMPLE_SUFFIXES)
    return Example(folder.name, model, samples)


def examples(root: Path = MODELS) -> list[Example]:
    """Every bundled example, the default first."""
    if not root.is_dir():
        return []
    found = [e for e in (example(d) for d in sorted(root.iterdir()) if d.is_dir()) if e is not None]
    return sorted(found, key=lambda e: e.name != DEFAULT_EXAMPLE)


def default_example(root: Path = MODELS) -> Example | None:
    found = [e for e in examples(root) if e.name == DEFAULT_EXAMPLE]
    return found[0] if found else None


def bundled_samples(root: Path = MODELS) -> list[Path]:
    """Every sample input shipped with the examples."""
    return [p for e in examples(root) for p in e.samples]


@dataclass(frozen=True)
class LookAt:
    """What the window opens a model on (read from ``look_at.json``)."""

    probe: str
    units: tuple[int, ...] = ()
    step: int | None = None
    view: str | None = None
    options: dict = field(default_factory=dict)  # view settings, e.g. {"attention_weighted": True}
    why: str = ""


def look_at_file(model_path) -> Path:
    """Where the look-at entry of the model at ``model_path`` (a file or a folder) would be."""
    path = Path(model_path)
    return (path if path.is_dir() else path.parent) / LOOK_AT_FILE


def look_at(model_path) -> LookAt | None:
    """The look-at entry beside the model at ``model_path``; None when there is none, or when it
    cannot be read as one (then the default first view is as good: nothing is lost)."""
    if model_path is None:
        return None
    path = look_at_file(model_path)
    try:
        if not path.is_file() or path.stat().st_size > LOOK_AT_MAX_BYTES:
            return None
        return parse_look_at(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError):
        return None


def parse_look_at(data) -> LookAt:
    """A :class:`LookAt` from the JSON object; ``ValueError`` naming what is wrong otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("probe"), str) or not data["probe"]:
        raise ValueError("a look-at entry is an object with a probe name")
    units = data.get("units", [data["unit"]] if "unit" in data else [])
    if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0
                                              for u in units):
        raise ValueError("units must be a list of unit numbers")
    step = data.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise ValueError("step must be a step number")
    view = data.get("view")
    if view is not None and not isinstance(view, str):
        raise ValueError("view must be a view's title")
    options = {k: bool(v) for k, v in data.items() if k == "attention_weighted"}
    return LookAt(data["probe"], tuple(units), step, view, options, str(data.get("why", "")))
