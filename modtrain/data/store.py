"""Token stores: a zarr v3 group with the token stream and document offsets.

Layout (schema in docs/data_format.md):
  STORE.zarr/            group; attributes describe the content and the tokenizer
    tokens               1-D, smallest unsigned dtype holding the vocabulary, sharded
    doc_offsets          1-D uint64, num_documents + 1 entries; doc i is tokens[o[i]:o[i+1]]
A store is written under a temporary name and renamed when complete, so a store that
opens is a finished one.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from modtrain.errors import ModtrainError

FORMAT_NAME = "modtrain.tokens"
FORMAT_VERSION = 1
CHUNK_TOKENS = 1 << 16  # one chunk: the unit of compression and of random reads
SHARD_TOKENS = 1 << 22  # one shard file holds 64 chunks


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id below `vocab_size`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def write_store(
    out: str | Path,
    documents: Iterable[np.ndarray],
    *,
    vocab_size: int,
    tokenizer_sha256: str,
    eos_id: int,
    sources: list[str],
    overwrite: bool = False,
) -> Path:
    """Write token documents (each already ending in EOS) to a new store at `out`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ModtrainError(f"store {out} already exists; pass --overwrite or choose another --out")
    dtype = token_dtype(vocab_size)
    docs = [np.asarray(d, dtype=dtype) for d in documents]
    lengths = np.array([len(d) for d in docs], dtype=np.uint64)
    if not len(docs) or int(lengths.sum()) == 0:
        raise ModtrainError("the corpus produced no tokens; pass files that contain text")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    tokens = np.concatenate(docs)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(tmp, mode="w", zarr_format=3)
    chunk = min(CHUNK_TOKENS, len(tokens))
    shard = max(chunk, min(SHARD_TOKENS, -(-len(tokens) // chunk) * chunk))
    arr = group.create_array(
        "tokens", shape=tokens.shape, dtype=dtype, chunks=(chunk,), shards=(shard,),
        compressors=ZstdCodec(level=3), dimension_names=["token"],
    )
    arr[:] = tokens
    off = group.create_array(
        "doc_offsets", shape=offsets.shape, dtype=np.uint64,
        chunks=(min(CHUNK_TOKENS, len(offsets)),), compressors=ZstdCodec(level=3),
        dimension_names=["document_boundary"],
    )
    off[:] = offsets
    group.attrs.update({
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tokenizer_sha256": tokenizer_sha256,
        "vocab_size": int(vocab_size),
        "eos_id": int(eos_id),
        "dtype": dtype.name,
        "num_tokens": int(len(tokens)),
        "num_documents": len(docs),
        "sources": sources,
    })
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


class TokenStore:
    """Random access to a token store without loading it: reads whole chunks, caches a few."""

    def __init__(self, path: str | Path, cache_chunks: int = 64) -> None:
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise ModtrainError(
                f"token store {path} does not exist or is incomplete; create it with "
                "'modtrain data prepare'"
            )
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT_NAME:
            raise ModtrainError(f"{path} is a zarr group but not a modtrain token store")
        self.path = path
        self.attrs = attrs
        self.tokens = group["tokens"]
        self.doc_offsets = np.asarray(group["doc_offsets"][:], dtype=np.int64)
        self.chunk = int(self.tokens.chunks[0])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks

    @property
    def num_tokens(self) -> int:
        return int(self.attrs["num_tokens"])

    @property
    def vocab_size(self) -> int:
        return int(self.attrs["vocab_size"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.attrs["tokenizer_sha256"])

    def _chunk(self, i: int) -> np.ndarray:
        data = self._cache.get(i)
        if data is None:
            data = self.tokens[i * self.chunk : (i + 1) * self.chunk]
            self._cache[i] = data
            if len(self._cache) > self._cache_chunks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
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
