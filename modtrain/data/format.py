"""The token store format: the contract between its writer and its reader.

Names, versions, default sizes and the few pure functions that data.write and data.read
must agree on (the schema in full: docs/data_format.md). A store is a zarr v3 group:
  STORE.zarr/            group; attributes describe the content and the tokenizer
    tokens               1-D, smallest unsigned dtype holding the vocabulary, sharded
    doc_offsets          1-D uint64, num_documents + 1 entries; doc i is tokens[o[i]:o[i+1]]
    shard_sha256         [num_shards, 32] uint8, SHA-256 of each shard file of `tokens`
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import zarr

FORMAT_NAME = "modtrain.tokens"  # the group attribute `format`
FORMAT_VERSION = 2  # the group attribute `format_version` written
READABLE_VERSIONS = (1, 2)  # version 1: no shard checksums, otherwise the same

GROUP_METADATA = "zarr.json"  # exists once a store is complete (it is renamed into place)
TOKENS = "tokens"  # array names
DOC_OFFSETS = "doc_offsets"
SHARD_SHA256 = "shard_sha256"

CHUNK_TOKENS = 1 << 16  # one chunk: the unit of compression and of random reads
SHARD_CHUNKS = 64  # chunks per shard file: 4,194,304 tokens


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id below `vocab_size`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def is_store(path: Path) -> bool:
    """Whether `path` is a complete modtrain token store (its group metadata names the format)."""
    try:
        meta = json.loads((path / GROUP_METADATA).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and \
        meta["attributes"].get("format") == FORMAT_NAME


def build_dir_for(out: Path) -> Path:
    """The hidden directory beside store `out` in which it is assembled (.NAME.zarr.build)."""
    return out.with_name(f".{out.name}.build")


def shard_file(store_path: Path, tokens: zarr.Array, shard: int) -> Path:
    """The file of shard `shard` of the store's `tokens` array."""
    return store_path / TOKENS / tokens.metadata.encode_chunk_key((shard,))


def file_digest(path: Path) -> bytes:
    """SHA-256 of a file, as recorded per shard file in `shard_sha256`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def ids_digest(ids: np.ndarray) -> bytes:
    """SHA-256 of token ids as little-endian bytes of their dtype (one shard's part of
    `content_sha256`)."""
    return hashlib.sha256(ids.astype(ids.dtype.newbyteorder("<")).tobytes()).digest()


def content_digest(raw_shard_digests: list[bytes], doc_offsets: np.ndarray) -> str:
    """SHA-256 over the raw digest of each shard, in order, then that of the offsets.

    It depends only on the token ids and offsets, not on compression, so two builds of
    the same corpus with any number of processes give the same value.
    """
    h = hashlib.sha256()
    for d in raw_shard_digests:
        h.update(d)
    h.update(hashlib.sha256(doc_offsets.astype("<u8").tobytes()).digest())
    return h.hexdigest()
