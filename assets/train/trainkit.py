"""What the training scripts share: deterministic torch setup, a time budget, saving a model in
SeqScope's own format and checking that ``engine.load`` gives back the same logits, and writing
``evidence.json`` and the model card."""
from __future__ import annotations

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


def add_provenance(path: Path, note: str) -> None:
    """Re-write a ``save_model`` file with one more metadata entry, ``seqscope_provenance``
    (which script made it).  Its length is chosen so that the file's first byte is not 0x80:
    the engine's format sniffing (``engine.loading._sniff``) checks for a pickle's first byte
    before it checks for safetensors, and would take a safetensors file whose 8-byte header
    length has 0x80 as its low byte for a pickle and lose its vocabulary and config."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for pad in range(0, 64):
        meta["seqscope_provenance"] = note + " " * pad
        tmp = path.with_name("." + path.name + ".prov")
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            first = f.read(1)
        if first != b"\x80":
            os.replace(tmp, path)
            return
        tmp.unlink()
    raise RuntimeError("could not write a header that the engine sniffs as safetensors")


def save_and_verify(stack, path: Path, inputs, torch_logits: np.ndarray, note: str = "") -> float:
    """Write ``stack`` (a ``RecurrentStack``, e.g. from ``from_torch``) with
    ``engine.loading.save_model``, load it back with ``engine.load`` and run ``inputs`` through
    ``engine.run``; return the largest difference from ``torch_logits`` (what the torch module
    computed on the same inputs), raising if it is not float32 round-off."""
    import engine
    from engine.loading import save_model

    save_model(stack, path)
    add_provenance(path, note)
    os.chmod(path, 0o644)  # save_model writes through a private temporary file
    model = engine.load(path, device="cpu")
    trace = engine.run(model, inputs, probes="logits")
    diff = float(np.max(np.abs(trace["logits"] - torch_logits)))
    if not diff < 1e-4:
        raise RuntimeError(f"engine.load({path.name}) does not reproduce the torch module's logits: max diff {diff}")
    return diff


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
