"""Corpora in every input format prepare reads, made from the shared shakespeare head."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard


@pytest.fixture(scope="session")
def documents(corpus) -> list[str]:
    """Paragraphs of the corpus: the documents of the mixed corpus, in order."""
    return [p + "\n" for p in corpus.read_text().split("\n\n") if p.strip()]


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory, documents) -> Path:
    """A directory: JSON Lines, gzip JSON Lines, zstd text and plain text files.

    Sorted names give the document order: a.jsonl, b.jsonl.gz, c.txt.zst, d.txt.
    """
    root = tmp_path_factory.mktemp("mixed")
    q = len(documents) // 4
    with open(root / "a.jsonl", "w") as f:
        for d in documents[:q]:
            f.write(json.dumps({"id": 1, "body": d}) + "\n")
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        for d in documents[q : 2 * q]:
            f.write(json.dumps({"body": d}) + "\n")
    (root / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(documents[2 * q : 3 * q]).encode()))
    (root / "d.txt").write_text("".join(documents[3 * q :]))
    return root


@pytest.fixture(scope="session")
def mixed_documents(documents) -> list[str]:
    """What the mixed corpus holds: JSON records are documents, text files one each."""
    q = len(documents) // 4
    return [*documents[: 2 * q], "".join(documents[2 * q : 3 * q]), "".join(documents[3 * q :])]
