from __future__ import annotations

import numpy as np
import pytest
import zarr

from modtrain.data.format import shard_file, token_dtype
from modtrain.data.read.chunks import supports as direct_reads
from modtrain.data.read.store import TokenStore
from modtrain.data.tokenizer import Tokenizer
from modtrain.data.write.prepare import prepare_store
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
    assert attrs["format"] == "modtrain.tokens" and attrs["format_version"] == 2
    assert attrs["num_tokens"] == tokens.shape[0] and attrs["num_documents"] == len(offsets) - 1
    assert group["shard_sha256"].shape == (attrs["num_shards"], 32)
    assert len(attrs["content_sha256"]) == 64


def test_direct_chunk_reads_equal_zarr_reads(tmp_path, char_tokenizer, corpus):
    path = prepare_store(char_tokenizer, [corpus], tmp_path / "s.zarr", chunk_tokens=3000,
                         shard_chunks=4)  # 34 chunks in 9 shards, the last ones partial
    store = TokenStore(path)
    assert store._direct is not None
    n = store.num_tokens
    for i in range(-(-n // 3000)):
        expected = store.tokens[i * 3000 : (i + 1) * 3000]
        assert np.array_equal(store._direct.read(i)[: len(expected)], expected)
    # A layout it does not know (here: no crc32c) is left to zarr.
    g = zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    arr = g.create_array("tokens", shape=(10,), dtype=np.uint8, chunks=(5,), shards=(10,),
                         compressors=zarr.codecs.ZstdCodec())
    assert not direct_reads(arr)


def test_a_missing_shard_file_fails_reads(tmp_path, char_tokenizer, corpus):
    path = prepare_store(char_tokenizer, [corpus], tmp_path / "s.zarr", chunk_tokens=4096,
                         shard_chunks=2)
    store = TokenStore(path)
    shard_file(path, store.tokens, 3).unlink()  # zarr alone would read it as zeros
    with pytest.raises(ModtrainError, match="cannot be read at tokens chunk 6"):
        store.read(6 * 4096, 6 * 4096 + 10)


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
