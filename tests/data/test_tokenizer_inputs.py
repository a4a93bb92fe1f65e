"""`tokenizer train --input` takes what `data prepare --input` takes: files, directories
(recursively, hidden files skipped) and globs; other formats are one line."""

from __future__ import annotations

import gzip
import subprocess
import sys

import sentencepiece as spm

from tests.conftest import cli_env


def _tokenizer_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modtrain", "tokenizer", "train", *args,
                           "--type", "char"], env=cli_env(), capture_output=True, text=True,
                          timeout=120)


def test_a_directory_is_its_text_files(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("abc abc\n")
    (corpus / "sub" / "b.txt").write_text("xyz\n")
    (corpus / ".hidden").write_text("Q\n")  # skipped, as data prepare skips it
    proc = _tokenizer_train("--input", str(corpus), "--out", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    pieces = {spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model")).id_to_piece(i)
              for i in range(2, 9)}
    assert {"a", "b", "c", "x", "y", "z"} <= pieces and "Q" not in pieces


def test_a_compressed_file_in_the_directory_is_one_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("abc\n")
    with gzip.open(corpus / "b.txt.gz", "wt") as f:
        f.write("xyz\n")
    proc = _tokenizer_train("--input", str(corpus), "--out", str(tmp_path / "t"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "b.txt.gz is gzip; tokenizer training reads plain text" in lines[0]
