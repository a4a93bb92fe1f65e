"""tokenizer/*.yaml: every shipped spec loads, and `tokenizer train --spec` trains from one."""

from __future__ import annotations

from pathlib import Path

import pytest

from modtrain.cli import main
from modtrain.data.tokenizer import Tokenizer, load_spec, usable_cores
from modtrain.errors import ModtrainError

SPECS = sorted((Path(__file__).resolve().parents[2] / "tokenizer").glob("*.yaml"))


def test_shipped_specs_load():
    assert {p.stem for p in SPECS} >= {"char", "bpe_8k", "bpe_32k_web", "unigram_16k"}
    for path in SPECS:
        spec = load_spec(path)
        assert spec["model_type"] in ("char", "bpe", "unigram") and spec["num_threads"] == 0
        assert spec["shuffle"] is True and spec["max_sentences"] > 0
    web = load_spec(SPECS[[p.stem for p in SPECS].index("bpe_32k_web")])
    assert web["vocab_size"] == 32000 and web["max_sentences"] == 10_000_000
    assert usable_cores() >= 1


def test_train_from_a_spec_and_override_it(tmp_path, corpus, capsys):
    spec = tmp_path / "small.yaml"
    spec.write_text("type: bpe\nvocab_size: 400\ninput_sentence_size: 500\n"
                    "shuffle_input_sentence: true\nnum_threads: 0\nseed: 3\n")
    assert main(["tokenizer", "train", "--spec", str(spec), "--input", str(corpus),
                 "--out", str(tmp_path / "bpe")]) == 0
    assert Tokenizer(tmp_path / "bpe.model").vocab_size == 400
    char = SPECS[[p.stem for p in SPECS].index("char")]
    assert main(["tokenizer", "train", "--spec", str(char), "--input", str(corpus),
                 "--out", str(tmp_path / "c")]) == 0
    text = corpus.read_text()
    assert Tokenizer(tmp_path / "c.model").vocab_size == len(set(text)) + 2  # + unk, eos
    assert main(["tokenizer", "train", "--spec", str(spec), "--vocab-size", "420", "--input",
                 str(corpus), "--out", str(tmp_path / "o")]) == 0
    assert Tokenizer(tmp_path / "o.model").vocab_size == 420
    capsys.readouterr()


def test_a_spec_with_an_unknown_key_is_refused(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("type: bpe\nvocab: 300\n")
    with pytest.raises(ModtrainError, match=r"unknown keys \['vocab'\]; allowed: type, vocab_size"):
        load_spec(spec)
