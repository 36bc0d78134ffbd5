"""Vocabularies shipped beside Keras weights (engine/keras_tokenizer.py, engine/loading/side_files.py):
Keras's ``Tokenizer.to_json()`` (word level and ``char_level``, ``lower``, ``filters``, ``oov_token``,
``num_words``) encoding exactly as Keras's own ``texts_to_sequences`` (Keras 3 still ships that
Tokenizer as ``keras.src.legacy.preprocessing.text``: the reference here), and a plain
``{char: id}`` JSON numbered 1..N, found beside a ``.keras`` model and used by ``engine.run``."""
from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from engine.errors import InputError
from engine.keras_tokenizer import KerasTokenizer
from engine.tokenizers import PADDING, CharVocab, tokenizer_from_dict

from keras_import import import_keras

TEXTS = ["The cat sat on the mat.", "A dog, a cat; and THE bird!", "the end"]
PROBES = ["the cat saw a bird", "The Mat, the END.", "  leading and trailing  "]


@pytest.fixture(scope="module")
def Tokenizer():
    import_keras()
    from keras.src.legacy.preprocessing.text import Tokenizer

    return Tokenizer


@pytest.mark.parametrize("options", [{}, {"oov_token": "<OOV>"}, {"num_words": 6, "oov_token": "<OOV>"},
                                     {"lower": False, "filters": ""}, {"split": ",", "filters": "."}],
                         ids=["defaults", "oov", "num_words", "no-lower-no-filters", "split-comma"])
def test_word_level_ids_are_keras_texts_to_sequences(Tokenizer, options):
    keras_tok = Tokenizer(**options)
    keras_tok.fit_on_texts(TEXTS)
    ours = KerasTokenizer.from_json(json.loads(keras_tok.to_json()))
    for text in PROBES + TEXTS:
        want = keras_tok.texts_to_sequences([text])[0]
        try:
            ids, pieces = ours.encode(text)
        except InputError as exc:  # Keras drops unknown words silently; SeqScope refuses, naming them
            assert len(want) < len(ours._tokens(text)) and "no oov_token" in str(exc)
            continue
        assert ids.tolist() == want
        assert "".join(pieces) == text  # token texts are cut from the input
    assert ours.vocab_size == min(len(keras_tok.word_index) + 1, options.get("num_words") or 10**9)


@pytest.mark.parametrize("lower", [True, False])
def test_char_level_ids_are_keras_texts_to_sequences(Tokenizer, lower):
    keras_tok = Tokenizer(char_level=True, lower=lower, oov_token="?")
    keras_tok.fit_on_texts(TEXTS)
    ours = KerasTokenizer.from_json(json.loads(keras_tok.to_json()))
    for text in PROBES + ["Zebra #1 ÉÉ"]:
        ids, pieces = ours.encode(text)
        assert ids.tolist() == keras_tok.texts_to_sequences([text])[0]
        assert pieces == list(text)
    assert ours.unknown_note("Zebra") and "oov_token '?'" in ours.unknown_note("Zebra")
    assert tokenizer_from_dict(json.loads(json.dumps(ours.to_dict()))).encode("cat")[0].tolist() == \
        keras_tok.texts_to_sequences(["cat"])[0]  # kept in traces and saved models as it was read


def _keras_char_model(keras, vocab_size):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(vocab_size, 4),
                              L.GRU(5, return_sequences=True), L.Dense(vocab_size)])
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])
    return model


def test_a_keras_tokenizer_json_beside_a_keras_model_is_used(Tokenizer, tmp_path):
    keras = import_keras()
    keras_tok = Tokenizer(char_level=True)
    keras_tok.fit_on_texts(TEXTS)
    model = _keras_char_model(keras, len(keras_tok.word_index) + 1)
    model.save(tmp_path / "m.keras")
    (tmp_path / "tokenizer.json").write_text(keras_tok.to_json())  # what Keras tutorials name it
    loaded = engine.load(tmp_path / "m.keras", device="cpu")
    assert isinstance(loaded.tokenizer, KerasTokenizer) and loaded.load_info["vocabulary"] == "tokenizer.json"
    text = "The Cat"  # upper case: the tokenizer lower-cases, as Keras's does
    ids = keras_tok.texts_to_sequences([text])[0]
    trace = engine.run(loaded, text)
    assert trace.tokens.tolist() == ids and list(trace.token_text) == list(text)
    want = np.asarray(model(np.asarray([ids], dtype="int32")).detach())[0]
    np.testing.assert_allclose(trace["logits"], want, atol=1e-5, rtol=1e-5)  # float32 both sides


def test_a_plain_char_to_id_json_named_after_the_model_is_used(tmp_path):
    keras = import_keras()
    chars = "abc de"
    vocab = {c: i + 1 for i, c in enumerate(chars)}  # 1..N, 0 is padding (textgenrnn's form)
    model = _keras_char_model(keras, len(chars) + 1)
    model.save_weights(tmp_path / "charnet.weights.h5")
    (tmp_path / "charnet_vocab.json").write_text(json.dumps(vocab))
    loaded = engine.load(tmp_path / "charnet.weights.h5", device="cpu")
    assert isinstance(loaded.tokenizer, CharVocab) and loaded.tokenizer.pieces == [PADDING] + list(chars)
    trace = engine.run(loaded, "bad cab")
    want = np.asarray(model(np.asarray([[vocab[c] for c in "bad cab"]], dtype="int32")).detach())[0]
    np.testing.assert_allclose(trace["logits"], want, atol=1e-5, rtol=1e-5)


def test_a_bad_keras_tokenizer_is_refused_in_words():
    with pytest.raises(ValueError, match="ids must be 1..N"):
        KerasTokenizer({"a": 1, "b": 5})
    with pytest.raises(ValueError, match="num_words must be a positive whole number"):
        KerasTokenizer({"a": 1}, num_words=-3)
    tok = KerasTokenizer({"a": 1, "b": 2}, char_level=True)
    with pytest.raises(InputError, match="no oov_token .*'z'"):
        tok.encode("abz")
