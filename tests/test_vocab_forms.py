"""Vocabularies as people store them beside char-RNN weights: under ``vocab_mapping`` (and the
other common names), numbered 1..N with 0 as padding (Keras's Tokenizer), read and used."""
import numpy as np
import pytest
import torch

import engine
from engine.tokenizers import PADDING, CharVocab


class CharRNN(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 4)
        self.rnn = torch.nn.GRU(4, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, vocab)

    def forward(self, ids):
        return self.fc(self.rnn(self.embedding(ids))[0])


@pytest.mark.parametrize("key", ["vocab_mapping", "char_indices", "word_index"])
def test_a_vocabulary_numbered_from_one_under_any_common_name_is_used(tmp_path, key):
    chars = "abc xyz"
    mapping = {c: i + 1 for i, c in enumerate(chars)}  # 0 is padding
    torch.manual_seed(0)
    module = CharRNN(len(chars) + 1).eval()
    torch.save({"model": module.state_dict(), key: mapping}, tmp_path / "m.pt")
    model = engine.load(tmp_path / "m.pt", device="cpu")
    assert model.tokenizer.pieces == [PADDING] + list(chars)
    text = "zyx cab"
    trace = engine.run(model, text, probes="logits")
    with torch.no_grad():
        expected = module(torch.tensor([[mapping[c] for c in text]]))[0].numpy()
    np.testing.assert_allclose(trace["logits"], expected, atol=1e-5, rtol=1e-5)


def test_ids_from_one_with_a_gap_are_still_refused():
    with pytest.raises(ValueError, match="no gaps"):
        CharVocab.from_any({"a": 1, "b": 3})


def test_seqscope_info_says_where_the_vocabulary_came_from_or_that_there_is_none(tmp_path, capsys):
    from engine.cli import main

    torch.manual_seed(1)
    state = CharRNN(5).state_dict()
    torch.save({"model": state, "vocab_mapping": {c: i + 1 for i, c in enumerate("abcd")}}, tmp_path / "m.pt")
    torch.save(state, tmp_path / "bare.pt")
    assert main(["info", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "'<pad>' 'a' 'b' 'c' 'd'" in out and "(from checkpoint entry 'vocab_mapping')" in out
    assert main(["info", str(tmp_path / "bare.pt")]) == 0
    assert "vocabulary    none found in the file or beside it: give token ids" in capsys.readouterr().out
