from __future__ import annotations

import numpy as np
import pytest
import zarr

from modtrain.data.prepare import prepare_store
from modtrain.data.store import TokenStore, token_dtype
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError


def test_text_to_store_to_text(char_store, char_tokenizer, corpus):
    store = TokenStore(char_store)
    tok = Tokenizer(char_tokenizer)
    ids = store.read(0, store.num_tokens)
    assert ids[-1] == tok.eos_id
    assert tok.decode(ids[:-1].tolist()) == corpus.read_text()
    # Reads across chunk boundaries equal the slice of the whole.
    assert np.array_equal(store.read(65_530, 65_600), ids[65_530:65_600])


def test_store_is_plain_zarr_v3(char_store, char_tokenizer):
    group = zarr.open_group(char_store, mode="r", zarr_format=3)
    assert group.metadata.zarr_format == 3
    tokens = group["tokens"]
    assert tokens.dtype == np.uint8
    assert tokens.shards is not None  # sharding codec
    offsets = group["doc_offsets"][:]
    assert offsets[0] == 0 and offsets[-1] == tokens.shape[0]
    attrs = group.attrs
    assert attrs["tokenizer_sha256"] == Tokenizer(char_tokenizer).sha256
    assert attrs["vocab_size"] == Tokenizer(char_tokenizer).vocab_size


@pytest.mark.parametrize("vocab,dtype", [(256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                         (65537, np.uint32)])
def test_smallest_sufficient_dtype(vocab, dtype):
    assert token_dtype(vocab) == dtype


def test_documents_end_with_eos(tmp_path, char_tokenizer):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("First Citizen:\n")
    b.write_text("All:\nSpeak.\n")
    store = TokenStore(prepare_store(char_tokenizer, [a, b], tmp_path / "two.zarr"))
    tok = Tokenizer(char_tokenizer)
    o = store.doc_offsets
    assert len(o) == 3
    assert tok.decode(store.read(o[0], o[1] - 1).tolist()) == a.read_text()
    assert tok.decode(store.read(o[1], o[2] - 1).tolist()) == b.read_text()
    assert store.read(o[1] - 1, o[1])[0] == tok.eos_id


def test_bad_inputs(tmp_path, char_tokenizer, char_store):
    with pytest.raises(ModtrainError, match="does not exist"):
        prepare_store(char_tokenizer, [tmp_path / "missing.txt"], tmp_path / "x.zarr")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ModtrainError, match="is empty"):
        prepare_store(char_tokenizer, [empty], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(ModtrainError, match="already exists"):
        prepare_store(char_tokenizer, [empty], char_store)
    with pytest.raises(ModtrainError, match="does not exist or is incomplete"):
        TokenStore(tmp_path / "x.zarr")
