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


def test_an_existing_model_is_replaced_only_with_overwrite(tmp_path, corpus):
    path = train_tokenizer([corpus], tmp_path / "t", "char")
    before = path.read_bytes()
    few = tmp_path / "few.txt"
    few.write_text("abc\n")
    with pytest.raises(ModtrainError, match=r"t\.model already exists .* pass --overwrite"):
        train_tokenizer([few], tmp_path / "t", "char")
    assert path.read_bytes() == before
    train_tokenizer([few], tmp_path / "t", "char", overwrite=True)
    assert Tokenizer(path).vocab_size == 4 + 2  # a, b, c, newline + unk, eos


def test_a_corpus_line_that_is_not_utf8_is_named(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 50 + b"abc \xff\xfe bad\n")
    with pytest.raises(ModtrainError, match=r"bad\.txt line 51 is not UTF-8 \(byte 4"):
        train_tokenizer([bad], tmp_path / "t", "char")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_model_file_is_one_line(tmp_path, char_tokenizer, damage):
    path = tmp_path / "t.model"
    data = char_tokenizer.read_bytes()
    path.write_bytes(b"\x8f not a model \x00" * 8 if damage == "garbage" else data[:len(data) // 2])
    with pytest.raises(ModtrainError, match="is not a SentencePiece model"):
        Tokenizer(path)
