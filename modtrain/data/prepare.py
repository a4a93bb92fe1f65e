"""`modtrain data prepare`: text files -> tokens -> a zarr v3 store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modtrain.data.store import write_store
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError

ENCODE_BLOCK_CHARS = 1 << 20  # encode large files in newline-aligned blocks of ~1 MB


def _blocks(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = min(len(text), start + ENCODE_BLOCK_CHARS)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        yield text[start:end]
        start = end


def encode_document(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Token ids of one document followed by the end-of-document token."""
    ids: list[int] = []
    for block in _blocks(text):
        ids.extend(tokenizer.encode(block))
    ids.append(tokenizer.eos_id)
    return np.asarray(ids, dtype=np.int64)


def prepare_store(
    tokenizer_path: str | Path, inputs: list[str | Path], out: str | Path, overwrite: bool = False
) -> Path:
    """Each input file is one document; every document ends with EOS."""
    paths = [Path(p) for p in inputs]
    if Path(out).exists() and not overwrite:
        raise ModtrainError(f"store {out} already exists; pass --overwrite or choose another --out")
    if not paths:
        raise ModtrainError("no input files; pass --input FILE [FILE ...]")
    for p in paths:
        if not p.is_file():
            raise ModtrainError(f"corpus file {p} does not exist; pass existing text files")
    tokenizer = Tokenizer(tokenizer_path)
    texts = []
    for p in paths:
        text = p.read_text(encoding="utf-8")
        if not text.strip():
            raise ModtrainError(f"corpus file {p} is empty; remove it or add text")
        texts.append(text)
    docs = (encode_document(tokenizer, t) for t in texts)
    return write_store(
        out,
        docs,
        vocab_size=tokenizer.vocab_size,
        tokenizer_sha256=tokenizer.sha256,
        eos_id=tokenizer.eos_id,
        sources=[str(p) for p in paths],
        overwrite=overwrite,
    )
