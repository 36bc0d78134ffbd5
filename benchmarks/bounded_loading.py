"""Peak memory growth and time of engine.load on one small hostile file of each class that once
blew up (issue 10: a 400M-entry vocabulary list, a 6.4 GB identity, loops over 10^8 layers, 25 GB
from a stride-0 view, a 1 GB data.pkl from a 1 MB zip, a hang on a named pipe, a RecursionError).

    .venv/bin/python benchmarks/bounded_loading.py

Each case runs as tests/test_bounded_loading.py runs it: in a thread, under an address-space cap
3 GB above the process, with the peak resident memory reset before it (VmHWM)."""
from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import engine  # noqa: E402
import test_bounded_loading as t  # noqa: E402


def hostile_files(d: Path) -> dict:
    """Case name -> a call of engine.load on a small hostile file written under ``d``."""
    load = lambda path, **kw: (lambda: engine.load(path, device="cpu", **kw))  # noqa: E731
    cases = {"vocab id gap": load(t.char_lstm_pt(d / "gap.pt", stoi={"(": 0, ")": 400_000_000}))}

    width = 40_000
    torch.save({"model": {"rnn.weight_ih_l0": torch.randn(8, width), "rnn.weight_hh_l0": torch.randn(8, 2)},
                "chars": [chr(0x4E00 + i) for i in range(width)]}, d / "onehot.pt")
    cases["one-hot 40,000 wide"] = load(d / "onehot.pt")

    lying = {"cell": "lstm", "num_layers": 10**8, "hidden_size": 4, "input_size": 3}
    cases["num_layers 10^8 (config=)"] = load(t.char_lstm_pt(d / "m.pt"), config=lying)
    cases["num_hidden_layers 10^8 (Mamba config.json)"] = load(
        t.mamba_folder(d / "hf", {**t.HF_MAMBA_CONFIG, "num_hidden_layers": 10**8}))

    torch.save({"rnn.weight_ih_l0": torch.zeros(1).expand(400_000, 16_000),
                "rnn.weight_hh_l0": torch.zeros(1).expand(400_000, 100_000)}, d / "s0.pt")
    cases["stride-0 25 GB LSTM"] = load(d / "s0.pt")

    torch.save(t.lstm_state(), d / "honest.pt")
    with zipfile.ZipFile(d / "honest.pt") as src, zipfile.ZipFile(d / "bomb.pt", "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("data.pkl"):
                dst.writestr(info, src.read(info))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as out:
                for _ in range(1024):
                    out.write(bytes(1 << 20))
    cases[f"zip bomb ({(d / 'bomb.pt').stat().st_size / 1e6:.1f} MB -> 1 GB data.pkl)"] = load(d / "bomb.pt")

    os.mkfifo(d / "pipe.pt")
    cases["named pipe as checkpoint"] = load(d / "pipe.pt")

    (d / "deep").mkdir()
    save_file(t.lstm_state(vocab=5), str(d / "deep" / "model.safetensors"))
    (d / "deep" / "config.json").write_text("[" * 100_000)
    cases["config.json '[' * 100000"] = load(d / "deep")
    return cases


def main():
    with tempfile.TemporaryDirectory(prefix="seqscope-bounds-") as tmp:
        print(f"{'case':48} {'result':10} {'peak growth':>12} {'time':>8}")
        for name, call in hostile_files(Path(tmp)).items():
            _, error, growth, seconds = t.bounded(call)
            result = type(error).__name__ if error else "loaded"
            print(f"{name:48} {result:10} {growth / 2**20:9.1f} MB {seconds:7.2f}s")


if __name__ == "__main__":
    main()
