from __future__ import annotations

import pytest

from modtrain.data.tokenizer import Tokenizer, train_tokenizer
from modtrain.errors import ModtrainError


@pytest.mark.parametrize("kind,vocab", [("char", 0), ("bpe", 500), ("unigram", 500)])
def test_round_trip_is_exact(tmp_path, corpus, kind, vocab):
    path = train_tokenizer([corpus], tmp_path / kind, kind, vocab or 8000)
    tok = Tokenizer(path)
    text = corpus.read_text()[:3000] + "\n\n  two  spaces and more\n"
    assert tok.decode(tok.encode(text)) == text
    if kind != "char":
        assert tok.vocab_size == vocab


def test_char_vocabulary_is_the_character_set(char_tokenizer, corpus):
    tok = Tokenizer(char_tokenizer)
    chars = set(corpus.read_text())
    assert tok.vocab_size == len(chars) + 2  # + <unk> and </s> (newline is one of the chars)


def test_training_is_deterministic(tmp_path, corpus):
    a = Tokenizer(train_tokenizer([corpus], tmp_path / "a" / "t", "bpe", 500))
    b = Tokenizer(train_tokenizer([corpus], tmp_path / "b" / "t", "bpe", 500))
    text = corpus.read_text()[:2000]
    assert a.encode(text) == b.encode(text)


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(ModtrainError, match="does not exist"):
        train_tokenizer([tmp_path / "nope.txt"], tmp_path / "t", "char")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ModtrainError, match="is empty"):
        train_tokenizer([empty], tmp_path / "t", "char")


def test_impossible_vocabulary_is_a_one_line_error(tmp_path, corpus):
    with pytest.raises(ModtrainError, match="Vocabulary size is smaller"):
        train_tokenizer([corpus], tmp_path / "t", "bpe", 100)
