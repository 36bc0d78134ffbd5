"""A run's memory is estimated before it starts (engine.budget) and a run past its budget is
refused at once, naming the estimate and what would fit -- in engine.run, in `seqscope trace`
and in the window -- while the estimate follows what runs really hold."""
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine import budget as budget_mod
from engine.budget import (RunTooLarge, check_budget, default_budget, estimate_run_bytes, format_size,
                           parse_size)
from engine.cli import main
from memory_probe import proc_status, release_freed_memory, reset_peak

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
GiB = 2**30


@pytest.fixture(scope="module")
def char_lstm():
    return engine.load(MODELS / "char-lstm-python", device="cpu")


@pytest.fixture(scope="module")
def sample_text():
    return (MODELS / "char-lstm-python" / "sample.py").read_text()


def _measure_peak_growth(fn):
    release_freed_memory()
    if not reset_peak():
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    before = proc_status("VmRSS")
    result = fn()
    return result, proc_status("VmHWM") - before


# -- refusing before allocating ---------------------------------------------------------


def test_a_million_character_run_with_every_probe_is_refused_at_once_without_allocating(char_lstm):
    text = "def f(x):\n    return x * 2\n" * (1_000_000 // 27 + 1)
    text = text[:1_000_000]
    t0 = time.monotonic()
    with pytest.raises(RunTooLarge) as info:
        engine.run(char_lstm, text, max_bytes="2G")
    seconds = time.monotonic() - t0
    assert seconds < 2, f"the refusal took {seconds:.1f} s"
    message = str(info.value)
    # 1M tokens x (64 + 12 x 256 + 98) float32 values = 12.9 GB of arrays alone
    assert info.value.estimate.arrays == 1_000_000 * (64 + 12 * 256 + 98) * 4
    assert re.search(r"about 1[45]\.\d GB", message), message
    assert "1,000,000 tokens" in message and "budget of 2.0 GB" in message
    assert "tokens fit" in message and "max_bytes='16G'" in message
    assert "\n" not in message


def test_the_refusal_allocates_nothing_big(char_lstm):
    text = "x = [1, 2]\n" * 90_910  # a million characters

    def attempt():
        try:
            engine.run(char_lstm, text, max_bytes=GiB)
        except RunTooLarge:
            pass
    _, grown = _measure_peak_growth(attempt)
    # the input's ids and pieces only (~25 MB), not the 13 GB the run would take
    assert grown < 150 * 2**20, f"peak memory grew by {grown / 2**20:.0f} MB"


def test_the_default_budget_is_half_the_available_memory(char_lstm, monkeypatch):
    monkeypatch.setattr(budget_mod, "_meminfo", lambda: {"MemAvailable": 8 * GiB, "MemTotal": 16 * GiB})
    assert default_budget()[0] == 4 * GiB
    text = "ab" * 200_000  # 400k tokens: 5.2 GB of arrays
    with pytest.raises(RunTooLarge, match=r"budget of 4\.0 GB \(50% of the 8\.0 GB available memory\)"):
        engine.run(char_lstm, text)
    trace = engine.run(char_lstm, text[:2000])  # small runs are untouched
    assert trace.n_tokens == 2000
    # raising the budget past what the machine has is offered with that said
    with pytest.raises(RunTooLarge, match=r"max_bytes='\d+G', more than the 8\.0 GB available now\)$"):
        engine.run(char_lstm, text * 3)


def test_the_default_budget_has_a_cap_and_a_fallback(monkeypatch):
    monkeypatch.setattr(budget_mod, "_meminfo", lambda: {"MemAvailable": 1024 * GiB})
    assert default_budget()[0] == budget_mod.DEFAULT_CAP
    monkeypatch.setattr(budget_mod, "_meminfo", lambda: {})
    monkeypatch.setattr(budget_mod.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert default_budget()[0] == budget_mod.FALLBACK_BUDGET


def test_no_limit_when_asked(char_lstm, monkeypatch):
    monkeypatch.setattr(budget_mod, "_meminfo", lambda: {"MemAvailable": 2**20})  # 1 MB available
    with pytest.raises(RunTooLarge):
        engine.run(char_lstm, "x = 1\n" * 100)
    assert engine.run(char_lstm, "x = 1\n" * 100, max_bytes=float("inf")).n_tokens == 600


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "lots", "0G", True])
def test_a_bad_budget_is_one_sentence(char_lstm, bad):
    with pytest.raises(engine.InputError):
        engine.run(char_lstm, "abc", max_bytes=bad)


def test_the_refusal_names_the_probes_to_leave_out_when_that_fits(char_lstm):
    est = estimate_run_bytes(char_lstm, 100_000, ["layers.*", "logits"])
    # room for everything but about two of the 256-wide probes
    budget = est.total - int(1.5 * est.probes["layers.0.h"])
    with pytest.raises(RunTooLarge) as info:
        check_budget(est, budget, override="--max-memory {size}")
    message = str(info.value)
    dropped = info.value.estimate.probes_to_drop(budget)
    assert len(dropped) == 2 and all(est.probes[d] == est.probes["layers.0.h"] for d in dropped)
    assert f"without {dropped[0]}, {dropped[1]} it fits" in message
    assert f"--max-memory {format_size(est.total * 1.1)}" in message
    # and the numbers it names are right: dropping them fits, the tokens it names fit
    kept = [p for p in est.probes if p not in dropped]
    assert estimate_run_bytes(char_lstm, 100_000, kept).total <= budget
    fits = est.tokens_that_fit(budget)
    assert estimate_run_bytes(char_lstm, fits, ["layers.*", "logits"]).total <= budget < est.total


def test_sizes_read_and_written():
    assert parse_size("16G") == 16 * GiB
    assert parse_size("512m") == 512 * 2**20
    assert parse_size("1.5GB") == int(1.5 * GiB)
    assert parse_size("2GiB") == 2 * GiB
    assert parse_size("100000") == 100000
    for bad in ("", "G", "-1G", "1X", "1e9"):
        with pytest.raises(engine.InputError):
            parse_size(bad)
    assert parse_size(format_size(13.3 * GiB)) >= 13.3 * GiB


# -- the estimate follows reality ------------------------------------------------------------


def _family_runs():
    """(name, model, input) for small runs of several families."""
    rng = np.random.default_rng(0)
    lstm = engine.load(MODELS / "char-lstm-python", device="cpu")
    gru = engine.load(MODELS / "gru-dyck", device="cpu")
    mamba = engine.load(MODELS / "selective-ssm-recall", device="cpu")
    mamba.scan = "torch"
    numeric = engine.load(MODELS / "lstm-timeseries", device="cpu")
    return [
        ("lstm", lstm, "def f(x):\n    return x\n" * 20),
        ("lstm batch", lstm, ["def f(x):\n", "y = 2\n" * 30, "z"]),
        ("gru", gru, "(()(()))" * 40),
        ("mamba", mamba, rng.integers(0, mamba.vocab_size, 300)),
        ("mamba batch", mamba, [rng.integers(0, mamba.vocab_size, n) for n in (120, 37)]),
        ("numeric lstm", numeric, rng.standard_normal((200, numeric.input_size)).astype(np.float32)),
    ]


@pytest.fixture(scope="module")
def family_runs():
    return _family_runs()


def test_the_estimate_is_within_30_percent_of_the_real_arrays_for_several_families(family_runs):
    for name, model, inputs in family_runs:
        for probes in ("*", ["layers.0.*"], "logits"):
            trace = engine.run(model, inputs, probes)
            lengths = [trace.sequence_slice(s).stop - trace.sequence_slice(s).start for s in range(trace.n_sequences)]
            est = estimate_run_bytes(model, trace.n_tokens, probes, lengths=lengths)
            real = sum(a.nbytes for a in trace.arrays.values())
            assert abs(est.arrays - real) <= 0.3 * real, (name, probes, est.arrays, real)
            assert set(est.probes) == set(trace.arrays), (name, probes)
            for probe, a in trace.arrays.items():
                assert abs(est.probes[probe] - a.nbytes) <= 0.3 * a.nbytes, (name, probe)


def test_the_estimate_follows_the_peak_memory_of_a_real_run(char_lstm, sample_text):
    """Arrays plus working memory: within 30 % of how much the process really grew."""
    text = (sample_text * 3)[:8000]
    engine.run(char_lstm, text[:300])  # kernels and allocator warmed up
    est = estimate_run_bytes(char_lstm, len(text), "*")
    trace, grown = _measure_peak_growth(lambda: engine.run(char_lstm, text))
    assert trace.n_tokens == len(text)
    assert 0.7 * grown <= est.total <= 1.3 * grown, (est.total, grown, dict(est.working))


def test_a_cached_rerun_counts_the_previous_runs_arrays(char_lstm, sample_text):
    cache = engine.PrefixCache()
    before = estimate_run_bytes(char_lstm, 1000, "*", cache=cache)
    trace = engine.run(char_lstm, sample_text[:1000], cache=cache)
    after = estimate_run_bytes(char_lstm, 1000, "*", cache=cache)
    held = sum(a.nbytes for a in trace.arrays.values())
    assert after.working["previous run"] == held
    assert after.total - before.total == held
    assert after.working["kept states"] > 0


# -- the command line ------------------------------------------------------------------------


def test_seqscope_trace_refuses_in_one_sentence_and_writes_nothing(tmp_path, capsys):
    big = tmp_path / "big.py"
    big.write_text("for i in range(10):\n    print(i)\n" * 30_000)  # ~1M characters
    out = tmp_path / "out.h5"
    t0 = time.monotonic()
    rc = main(["trace", str(MODELS / "char-lstm-python"), "--input", str(big), "--max-memory", "1G",
               "-o", str(out), "--device", "cpu"])
    seconds = time.monotonic() - t0
    _, err = capsys.readouterr()
    assert rc == 2 and not out.exists()
    assert seconds < 5
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqscope: error: this run would need about ")
    assert "budget of 1.0 GB (as given)" in lines[0]
    assert re.search(r"\(--max-memory \d+G(, more than the [\d.]+ [MG]B available now)?\)$", lines[0]), lines[0]
    assert "max_bytes" not in lines[0]


def test_seqscope_trace_runs_within_a_given_budget(tmp_path, capsys):
    out = tmp_path / "out.h5"
    rc = main(["trace", str(MODELS / "char-lstm-python"), "--text", "x = 1\n", "--max-memory", "200M",
               "-o", str(out), "--device", "cpu"])
    assert rc == 0 and engine.load_trace(out).n_tokens == 6
    rc = main(["trace", str(MODELS / "char-lstm-python"), "--text", "x = 1\n", "--max-memory", "lots",
               "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "'lots' is not a size" in err


# -- the window ----------------------------------------------------------------------------


def test_the_window_decides_what_to_record_with_the_same_estimate(qtbot, char_lstm):
    pytest.importorskip("pytestqt")
    from workbench.session import Session

    session = Session()
    try:
        session.model = char_lstm
        session.probe = "layers.0.c"
        n = 10_000
        everything = 2 * estimate_run_bytes(char_lstm, n, "*").arrays  # clean and steered
        session.capture_budget_bytes = everything
        assert session.capture_probes(n) == "*"
        session.capture_budget_bytes = everything - 1
        kept = session.capture_probes(n)
        assert kept != "*" and "layers.0.c" in kept and "layers.1.gate_f" not in kept
    finally:
        session.runner.shutdown()


def test_the_window_says_what_fits_when_a_run_is_too_large(qtbot, char_lstm, monkeypatch):
    pytest.importorskip("pytestqt")
    from workbench.session import Session

    monkeypatch.setattr(budget_mod, "_meminfo", lambda: {"MemAvailable": 40 * 2**20})  # 20 MB budget
    session = Session()
    try:
        session.set_model(char_lstm)
        messages = []
        session.error.connect(messages.append)
        with qtbot.waitSignal(session.error, timeout=20000):
            session.set_text("x = [1, 2]\n" * 2000)
        assert messages[-1].startswith("Could not run the model: this run would need about ")
        assert "tokens fit" in messages[-1] and "max_bytes" not in messages[-1]
        assert "Traceback" not in messages[-1]
    finally:
        session.runner.shutdown()


def test_on_a_gpu_the_default_budget_also_checks_its_free_memory(monkeypatch):
    """Checked without a GPU: the refusal comes before anything is put on the device."""
    model = engine.load(MODELS / "gru-dyck", device="cpu")
    monkeypatch.setattr(model, "device", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**20, 80 * GiB))
    with pytest.raises(RunTooLarge, match=r"budget of 7\.2 MB \(90% of the 8\.0 MB of free GPU memory\)"):
        engine.run(model, "()" * 20_000)
