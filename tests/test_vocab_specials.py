"""Special entries (``<pad>``, ``<unk>``, ``<s>``, ``</s>``, ``[PAD]``) in a character vocabulary are
specials: they bring no advice to give token ids, no text is read as them, ``<unk>`` stands for
characters the vocabulary lacks, and every other entry maps as the character it is (issue 11 item 5)."""
import numpy as np
import pytest
import torch

import engine
from engine.errors import InputError
from engine.tokenizers import CharVocab, is_special_token


class CharRNN(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 4)
        self.rnn = torch.nn.LSTM(4, 6, batch_first=True)
        self.fc = torch.nn.Linear(6, vocab)

    def forward(self, ids):
        return self.fc(self.rnn(self.embedding(ids))[0])


def _saved(tmp_path, pieces, form):
    torch.manual_seed(3)
    module = CharRNN(len(pieces)).eval()
    vocab = {p: i for i, p in enumerate(pieces)} if form == "stoi" else list(pieces)
    torch.save({"state_dict": module.state_dict(), "char2idx" if form == "stoi" else "itos": vocab},
               tmp_path / "m.pt")
    return module, engine.load(tmp_path / "m.pt", device="cpu")


@pytest.mark.parametrize("form", ["stoi", "itos"])
def test_pad_and_unk_are_specials_and_characters_map_as_characters(tmp_path, form):
    pieces = ["<pad>", "<unk>", "a", "b", "c", " "]
    module, model = _saved(tmp_path, pieces, form)
    notes = model.load_info.get("notes", "")
    assert "token ids" not in notes and "longer than one character" not in notes
    assert "<pad>, <unk>" in notes
    assert model.tokenizer.specials == ["<pad>", "<unk>"] and model.tokenizer.unknown == "<unk>"
    # 'z' is not in the vocabulary: read as <unk> (id 1); the others as themselves
    text = "ab cz"
    trace = engine.run(model, text, probes="logits")
    ids = [2, 3, 5, 4, 1]
    with torch.no_grad():
        expected = module(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(trace["logits"], expected, atol=1e-5, rtol=1e-5)  # float32 vs float32


def test_sentence_markers_without_unk_leave_missing_characters_refused(tmp_path):
    _, model = _saved(tmp_path, ["<s>", "</s>", "x", "y"], "itos")
    assert "token ids" not in model.load_info.get("notes", "")
    assert model.tokenizer.unknown is None
    ids, _ = model.tokenizer.encode("xyyx")
    assert ids.tolist() == [2, 3, 3, 2]
    with pytest.raises(InputError, match="lacks"):
        model.tokenizer.encode("<s>x")  # text spelling a special is characters, here missing ones


def test_a_word_vocabulary_still_gets_the_advice(tmp_path):
    _, model = _saved(tmp_path, ["<pad>", "the", "cat", "a"], "itos")
    assert "give token ids for word-level vocabularies" in model.load_info["notes"]


@pytest.mark.parametrize("piece,special", [("<pad>", True), ("<unk>", True), ("</s>", True), ("[PAD]", True),
                                           ("<|endoftext|>", True), ("PAD", True), ("UNK", True),
                                           ("pad", False), ("Pad", False), ("<", False), ("<>", False), ("<a b>", False),
                                           ("[x]", False), ("ab", False)])
def test_what_counts_as_special(piece, special):
    assert is_special_token(piece) is special
    assert (piece in CharVocab([piece, "q"]).specials) is special
