"""A store of many short documents, each ending in EOS: a row of 32 tokens holds several."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def paragraph_store(tmp_path_factory, char_tokenizer, corpus) -> Path:
    """The first 20 characters of each paragraph of the corpus, one document each."""
    from modtrain.data.tokenizer import Tokenizer
    from modtrain.data.write.build import write_store

    tok = Tokenizer(char_tokenizer)
    docs = [np.array(tok.encode(p[:20]) + [tok.eos_id])
            for p in corpus.read_text().split("\n\n") if p.strip()]
    out = tmp_path_factory.mktemp("paragraphs") / "paragraphs.zarr"
    return write_store(out, docs, vocab_size=tok.vocab_size, tokenizer_sha256=tok.sha256,
                       eos_id=tok.eos_id, sources=["corpus"])
