"""What the training scripts share: deterministic torch setup, a time budget, saving a model in
SeqScope's own format and checking that ``engine.load`` gives back the same logits, and writing
``evidence.json`` and the model card."""
from __future__ import annotations

import argparse

import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository
MODELS = ROOT / "assets" / "models"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def setup_torch(seed: int, threads: int = 2):
    """Fixed seeds everywhere and a fixed thread count (the results of CPU kernels may depend on
    how work is split across threads, so the count is part of the recipe)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # spinning OpenMP threads make torch many times slower when another process shares the cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch


class Budget:
    """A wall-clock budget: ``over()`` is true once ``minutes`` have passed."""

    def __init__(self, minutes: float):
        self.minutes = float(minutes)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.elapsed() > 60.0 * self.minutes


def environment() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def add_provenance(path: Path, note: str, extra: dict | None = None) -> None:
    """Re-write a ``save_model`` file with one more metadata entry, ``seqscope_provenance``
    (which script made it), and the string entries in ``extra``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["seqscope_provenance"] = note
    meta.update(extra or {})
    tmp = path.with_name("." + path.name + ".prov")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def save_and_verify(stack, path: Path, inputs, torch_logits: np.ndarray, note: str = "",
                    metadata: dict | None = None) -> float:
    """Write ``stack`` (a ``RecurrentStack``, e.g. from ``from_torch``) with
    ``engine.loading.save_model``, load it back with ``engine.load`` and run ``inputs`` through
    ``engine.run``; return the largest difference from ``torch_logits`` (what the torch module
    computed on the same inputs), raising if it is not float32 round-off."""
    import engine
    from engine.loading import save_model

    save_model(stack, path)
    add_provenance(path, note, metadata)
    os.chmod(path, 0o644)  # save_model writes through a private temporary file
    model = engine.load(path, device="cpu")
    trace = engine.run(model, inputs, probes="logits")
    diff = float(np.max(np.abs(trace["logits"] - torch_logits)))
    if not diff < 1e-4:
        raise RuntimeError(f"engine.load({path.name}) does not reproduce the torch module's logits: max diff {diff}")
    return diff


def arguments(doc: str, name: str, *, steps: int, minutes: float, seed: int, batch: int, lr: float,
              card_only: bool = False) -> argparse.ArgumentParser:
    """The options every training script takes (each adds its own model sizes)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=MODELS / name)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--minutes", type=float, default=minutes, help="stop training early after this long")
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--lr", type=float, default=lr)
    if card_only:
        ap.add_argument("--card-only", action="store_true", help="rewrite README.md from the evidence.json in --out")
    return ap


def previous_run(args) -> dict:
    """The evidence of the model already in ``--out``, with ``args`` set back to the arguments
    it was trained with (``--card-only``, ``--reanalyse``)."""
    ev = json.loads((args.out / "evidence.json").read_text())
    for k, v in ev["args"].items():
        setattr(args, k, v)
    return ev


def rewrite_card(args, write_card) -> dict:
    """``--card-only``: the card again from the evidence in ``--out``."""
    ev = previous_run(args)
    write_card(args.out, ev, args)
    return ev


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def claim_text(claim: dict) -> str:
    """How a card writes one named unit; the test looks for exactly this text in the card."""
    return f"`{claim['probe']}` unit {claim['unit']}"


def r_text(r: float) -> str:
    return f"{r:+.2f}"


def file_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def log(msg: str) -> None:
    print(msg, flush=True)
