"""Corpus recording on a GPU (skipped in CI, which has none): the recorded arrays equal the engine's
own run on the same GPU for each sequence (cuDNN sums batches in other orders: within 1e-4), and
the summaries equal brute force over the stored arrays (exact; moments to float64 rounding)."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus, sequences
from engine.corpus.summary import Summary, summarize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[1]
CHAR_LSTM = str(ROOT / "assets/models/char-lstm-python")
PROBES = ["layers.0.c", "layers.1.h", "logits"]


def test_cuda_recording_equals_the_engine_run_and_brute_force(tmp_path):
    model = engine.load(CHAR_LSTM, device="cuda")
    corpus = Corpus(ROOT / CHAR_LSTM / "heldout", glob="*.py")
    opts = RecordOptions(probes=PROBES, dtype="float16", seq_len=300, max_batch=8, k=16)
    record(model, corpus, tmp_path / "g.h5", opts)
    trace = engine.load_trace(tmp_path / "g.h5")
    for s in sequences(corpus, model, seq_len=300):
        alone = engine.run(model, s.ids, probes=PROBES)
        for name in PROBES:
            np.testing.assert_allclose(trace.array(name, s.index).astype(np.float32), alone.arrays[name],
                                       atol=1e-4 + 2e-3 * np.abs(alone.arrays[name]).max(), rtol=0)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        for name in PROBES:
            where = f[name] if name == "logits" else f["probes"][name]
            got, ref = Summary.read(f["summary"][name]), summarize(where[()], k=16)
            for key, value in ref.arrays().items():
                if key in ("mean", "m2"):
                    np.testing.assert_allclose(got.arrays()[key], value, rtol=1e-9, atol=1e-9)
                else:
                    np.testing.assert_array_equal(got.arrays()[key], value, err_msg=key)
