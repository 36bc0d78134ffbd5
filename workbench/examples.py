"""The example models bundled in ``assets/models``: where each one's weights and sample inputs
are.  One place for the app's default, the File ▸ Open example menu and the input editor's
sample list."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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
