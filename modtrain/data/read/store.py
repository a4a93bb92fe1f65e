"""Reading a token store: random access to its tokens, its offsets and its attributes.

The layout is the contract in format.py (schema in docs/data_format.md). A store is
assembled in a hidden build directory and renamed into place when complete (the writer
in modtrain/data/write/build.py), so a store that opens is a finished one.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr

from modtrain.data.format import (
    DOC_OFFSETS,
    FORMAT_NAME,
    GROUP_METADATA,
    READABLE_VERSIONS,
    TOKENS,
    build_dir_for,
)
from modtrain.data.read.chunks import ChunkReader
from modtrain.data.read.chunks import supports as direct_reads
from modtrain.errors import ModtrainError


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


class TokenStore:
    """Random access to a token store without loading it: reads whole chunks, caches a few."""

    def __init__(self, path: str | Path, cache_chunks: int = 64) -> None:
        path = Path(path)
        if not (path / GROUP_METADATA).is_file():
            partial = build_dir_for(path)
            hint = (
                f"; a partial build is at {partial}: rerun the same 'modtrain data prepare' "
                "to finish it" if partial.is_dir() else "; create it with 'modtrain data prepare'"
            )
            raise ModtrainError(f"token store {path} does not exist or is incomplete{hint}")
        self.path = path
        try:
            group = zarr.open_group(path, mode="r", zarr_format=3)
            attrs = dict(group.attrs)
        except Exception as e:  # zarr reports unreadable metadata in many types
            raise self._damaged(f"its metadata cannot be read: {_one_line(e)}") from None
        if attrs.get("format") != FORMAT_NAME:
            raise ModtrainError(f"{path} is a zarr group but not a modtrain token store")
        if attrs.get("format_version") not in READABLE_VERSIONS:
            raise ModtrainError(
                f"store {path} has format version {attrs.get('format_version')}, this modtrain "
                f"reads {READABLE_VERSIONS}; re-run 'modtrain data prepare' or upgrade modtrain"
            )
        self.attrs = attrs
        self.group = group
        try:
            self.tokens = group[TOKENS]
            self.chunk = int(self.tokens.chunks[0])
            counts = (int(attrs["num_tokens"]), int(attrs["num_documents"]))
        except Exception as e:
            raise self._damaged(f"its tokens array cannot be opened: {_one_line(e)}") from None
        if self.tokens.shape != (counts[0],) or counts[1] < 0:
            raise self._damaged(f"num_tokens {counts[0]} and num_documents {counts[1]} do not "
                                f"match the tokens array of shape {self.tokens.shape}")
        # the fast path for modtrain's own layout; zarr reads anything else
        self._direct = ChunkReader(path, self.tokens) if direct_reads(self.tokens) else None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()  # the cache is shared by training and validation reads

    def _damaged(self, what: str) -> ModtrainError:
        return ModtrainError(
            f"store {self.path} is damaged: {what}; check it with 'modtrain data inspect "
            f"{self.path} --verify', rebuild it with 'modtrain data prepare ... --overwrite'"
        )

    @functools.cached_property
    def doc_offsets(self) -> np.ndarray:
        """Document boundaries (num_documents + 1), read on first use: training needs none.
        Checked to cut all tokens into non-empty documents (a missing chunk reads as 0s)."""
        try:
            offsets = np.asarray(self.group[DOC_OFFSETS][:], dtype=np.int64)
        except Exception as e:
            raise self._damaged(f"doc_offsets cannot be read: {_one_line(e)}") from None
        if (offsets.shape != (self.num_documents + 1,) or offsets[0] != 0
                or offsets[-1] != self.num_tokens or np.any(np.diff(offsets) <= 0)):
            raise self._damaged("doc_offsets do not cut the tokens into its documents")
        return offsets

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
                f"store {self.path} cannot be read at tokens chunk {i} ({_one_line(e)}); "
                f"check it with 'modtrain data inspect {self.path} --verify'"
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
