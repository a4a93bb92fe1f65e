"""Token stores: a zarr v3 group with the token stream, document offsets and shard checksums.

Layout (schema in docs/data_format.md):
  STORE.zarr/            group; attributes describe the content and the tokenizer
    tokens               1-D, smallest unsigned dtype holding the vocabulary, sharded
    doc_offsets          1-D uint64, num_documents + 1 entries; doc i is tokens[o[i]:o[i+1]]
    shard_sha256         [num_shards, 32] uint8, SHA-256 of each shard file of `tokens`
A store is assembled in a hidden build directory and renamed into place when complete
(modtrain/data/build.py), so a store that opens is a finished one.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from modtrain.data.chunks import ChunkReader
from modtrain.data.chunks import supports as direct_reads
from modtrain.errors import ModtrainError

FORMAT_NAME = "modtrain.tokens"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no shard checksums, otherwise the same
CHUNK_TOKENS = 1 << 16  # one chunk: the unit of compression and of random reads
SHARD_CHUNKS = 64  # chunks per shard file: 4,194,304 tokens
# zarr skips writing all-fill chunks by default; every shard file must exist to be checksummed.
WRITE_ALL_CHUNKS = {"array.write_empty_chunks": True}


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id below `vocab_size`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def tokens_layout(num_tokens: int, chunk_tokens: int = CHUNK_TOKENS,
                  shard_chunks: int = SHARD_CHUNKS) -> tuple[int, int]:
    """(chunk, shard) lengths in tokens for an array of `num_tokens`."""
    chunk = max(1, min(chunk_tokens, num_tokens))
    shard = max(chunk, min(shard_chunks * chunk, -(-num_tokens // chunk) * chunk))
    return chunk, shard


def create_tokens_array(group: zarr.Group, num_tokens: int, dtype: np.dtype, chunk: int,
                        shard: int) -> zarr.Array:
    return group.create_array(
        "tokens", shape=(num_tokens,), dtype=dtype, chunks=(chunk,), shards=(shard,),
        # crc32c per chunk: a corrupted chunk fails loudly on every read, not only on --verify
        compressors=[ZstdCodec(level=3), Crc32cCodec()], fill_value=0,
        dimension_names=["token"], overwrite=True,
    )


def shard_file(store_path: Path, tokens: zarr.Array, shard: int) -> Path:
    return store_path / "tokens" / tokens.metadata.encode_chunk_key((shard,))


def file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def write_shard(store_path: Path, shard: int, data: np.ndarray) -> bytes:
    """Write one whole shard of `tokens` (data = its tokens); returns the file's SHA-256."""
    tokens = zarr.open_array(store_path / "tokens", mode="r+", zarr_format=3)
    size = int(tokens.shards[0])
    with zarr.config.set(WRITE_ALL_CHUNKS):
        tokens[shard * size : shard * size + len(data)] = data
    return file_digest(shard_file(store_path, tokens, shard))


class TokenStore:
    """Random access to a token store without loading it: reads whole chunks, caches a few."""

    def __init__(self, path: str | Path, cache_chunks: int = 64) -> None:
        path = Path(path)
        if not (path / "zarr.json").is_file():
            from modtrain.data.build import build_dir_for

            partial = build_dir_for(path)
            hint = (
                f"; a partial build is at {partial}: rerun the same 'modtrain data prepare' "
                "to finish it" if partial.is_dir() else "; create it with 'modtrain data prepare'"
            )
            raise ModtrainError(f"token store {path} does not exist or is incomplete{hint}")
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT_NAME:
            raise ModtrainError(f"{path} is a zarr group but not a modtrain token store")
        if attrs.get("format_version") not in READABLE_VERSIONS:
            raise ModtrainError(
                f"store {path} has format version {attrs.get('format_version')}, this modtrain "
                f"reads {READABLE_VERSIONS}; re-run 'modtrain data prepare' or upgrade modtrain"
            )
        self.path = path
        self.attrs = attrs
        self.group = group
        self.tokens = group["tokens"]
        self.chunk = int(self.tokens.chunks[0])
        # the fast path for modtrain's own layout; zarr reads anything else
        self._direct = ChunkReader(path, self.tokens) if direct_reads(self.tokens) else None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()  # the cache is shared by training and validation reads

    @functools.cached_property
    def doc_offsets(self) -> np.ndarray:
        """Document boundaries (num_documents + 1), read on first use: training needs none."""
        return np.asarray(self.group["doc_offsets"][:], dtype=np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.attrs["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.attrs["num_documents"])

    @property
    def vocab_size(self) -> int:
        return int(self.attrs["vocab_size"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.attrs["tokenizer_sha256"])

    @property
    def content_sha256(self) -> str:
        """Identity of the content: changes whenever any shard or the offsets change."""
        if "content_sha256" in self.attrs:
            return str(self.attrs["content_sha256"])
        # format version 1 has no checksums: size and tokenizer are the best identity
        return hashlib.sha256(
            f"{self.num_tokens}:{self.num_documents}:{self.tokenizer_sha256}".encode()
        ).hexdigest()

    def _chunk(self, i: int) -> np.ndarray:
        with self._lock:
            data = self._cache.get(i)
            if data is not None:
                self._cache.move_to_end(i)
                return data
        try:
            if self._direct is not None:
                data = self._direct.read(i)
            else:
                data = self.tokens[i * self.chunk : (i + 1) * self.chunk]
        except Exception as e:  # codec errors (crc32c, zstd) come in many types
            raise ModtrainError(
                f"store {self.path} cannot be read at tokens chunk {i} ({type(e).__name__}: "
                f"{e}); check it with 'modtrain data inspect {self.path} --verify'"
            ) from None
        with self._lock:
            self._cache[i] = data
            if len(self._cache) > self._cache_chunks:
                self._cache.popitem(last=False)
        return data

    def read(self, start: int, stop: int) -> np.ndarray:
        """tokens[start:stop] as int64."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside store of {self.num_tokens}")
        parts = []
        pos = start
        while pos < stop:
            c = pos // self.chunk
            base = c * self.chunk
            end = min(stop, base + self.chunk)
            parts.append(self._chunk(c)[pos - base : end - base])
            pos = end
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(parts).astype(np.int64)
