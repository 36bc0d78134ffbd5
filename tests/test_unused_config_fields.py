"""Fields a family's ``config.json`` keeps but its library does not use (issue 11 item 9): where
the config's fields disagree with each other, the weights decide.  Each case saves a tiny
``transformers`` model with ``save_pretrained``, edits such a field in ``config.json``, checks that
``transformers`` itself, loading the edited folder, still computes what it did (so the field is
unused), and that SeqScope loads the folder and gives the same logits (float32 both sides, atol 5e-5)."""
import json

import numpy as np
import pytest
import torch

import engine

transformers = pytest.importorskip("transformers")


def _mamba():
    from test_mamba_golden import hf_model
    return hf_model(3, vocab=23, d=8, layers=2)


def _mamba2():
    from test_mamba2_golden import hf_model
    return hf_model(3, vocab=23, d=16, layers=2, heads=4, head_dim=8)


def _rwkv():
    from test_rwkv_golden import hf_model
    return hf_model(3, vocab=23, d=8, layers=2)


def _xlstm():
    from test_xlstm_golden import hf_model
    return hf_model(3, vocab=23, d=16, layers=2, heads=2)


def _gemma():
    from test_recurrent_gemma_golden import hf_model
    return hf_model("mqa-w8", 3)


CASES = {
    # MambaConfig stores intermediate_size beside expand; the model is built from intermediate_size
    "mamba expand": (_mamba, {"expand": 5}),
    # Mamba2Config keeps time_step_rank, which Mamba2 never uses; a tie that the file's own
    # lm_head contradicts: transformers loads the head as it is
    "mamba2 time_step_rank, tie": (_mamba2, {"time_step_rank": 7, "tie_word_embeddings": True}),
    "rwkv context_length, tie": (_rwkv, {"context_length": 3, "tie_word_embeddings": True}),
    # xLSTMConfig builds num_blocks blocks; num_hidden_layers is kept beside it
    "xlstm num_hidden_layers": (_xlstm, {"num_hidden_layers": 7}),
    "recurrent_gemma init scales": (_gemma, {"w_init_variance_scale": 3.0, "final_w_init_variance_scale": 5.0}),
}


def _logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids[None]), use_cache=False).logits[0].float().numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_an_edited_unused_field_changes_nothing(tmp_path, case):
    build, edit = CASES[case]
    hf = build().eval()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert all(k in cfg and cfg[k] != v for k, v in edit.items())  # the field is there, and now differs
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **edit}))
    ids = np.random.default_rng(0).integers(0, 23, 12)
    reference = _logits(type(hf).from_pretrained(tmp_path).eval(), ids)
    np.testing.assert_allclose(reference, _logits(hf, ids), atol=1e-6)  # transformers does not use it
    model = engine.load(tmp_path, device="cpu")
    np.testing.assert_allclose(engine.run(model, ids, probes="logits")["logits"], reference, atol=5e-5, rtol=5e-5)
    if "tie_word_embeddings" in edit:
        assert "the file's head was used" in model.load_info["notes"]
