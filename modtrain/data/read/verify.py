"""`modtrain data inspect --verify`: every shard against its checksum, every id against the
vocabulary, the document offsets against the token stream.

It sits with the reader: it opens a finished store through TokenStore and checks it
against the contract in format.py (shard naming and digests), needing nothing from the
writer, so a store from any writer of the format can be verified.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modtrain.data.format import SHARD_SHA256, content_digest, file_digest, ids_digest, shard_file
from modtrain.data.read.store import TokenStore
from modtrain.errors import ModtrainError


def _damaged(store: TokenStore, what: str) -> ModtrainError:
    return ModtrainError(
        f"store {store.path}: {what}; the store is damaged: rebuild it with "
        "'modtrain data prepare ... --overwrite'"
    )


def check_checksums(store: TokenStore) -> int:
    """Compare each shard file with its recorded SHA-256; returns the number of shards."""
    if SHARD_SHA256 not in store.group:
        raise ModtrainError(
            f"store {store.path} has format version {store.attrs.get('format_version')} without "
            "shard checksums; re-run 'modtrain data prepare' to rebuild it with them"
        )
    expected = store.group[SHARD_SHA256][:]
    size = int(store.tokens.shards[0])
    num_shards = -(-store.num_tokens // size)
    if expected.shape != (num_shards, 32):
        raise _damaged(store, f"{expected.shape[0]} checksums for {num_shards} shards")
    missing, bad = [], []
    for s in range(num_shards):
        path = shard_file(store.path, store.tokens, s)
        if not path.is_file():
            missing.append(s)
        elif file_digest(path) != expected[s].tobytes():
            bad.append(s)
    problems = []
    for shards, what in ((missing, "missing"), (bad, "fail their SHA-256 checksum")):
        if shards:
            first = shard_file(store.path, store.tokens, shards[0]).relative_to(store.path)
            problems.append(f"{len(shards)} shard(s) {what}: {shards[:10]} (first: {first})")
    if problems:
        raise _damaged(store, "; ".join(problems))
    return num_shards


def verify_store(store: TokenStore) -> dict[str, Any]:
    """Raise ModtrainError on the first problem found; return a summary when all is well."""
    num_shards = check_checksums(store)
    n, vocab, eos = store.num_tokens, store.vocab_size, int(store.attrs["eos_id"])
    offsets = store.doc_offsets
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) <= 0):
        raise _damaged(store, "doc_offsets do not cut the token stream into non-empty documents")
    size = int(store.tokens.shards[0])
    ends: np.ndarray = offsets[1:] - 1
    raw, max_id = [], 0
    for s in range(num_shards):
        a, b = s * size, min(n, (s + 1) * size)
        data = store.tokens[a:b]
        raw.append(ids_digest(data))
        top = int(data.max())
        if top >= vocab:
            at = a + int(np.argmax(data >= vocab))
            raise _damaged(store, f"token {at} has id {top}, not below vocab_size {vocab}")
        max_id = max(max_id, top)
        mine = ends[(ends >= a) & (ends < b)] - a
        if np.any(data[mine] != eos):
            doc = int(np.searchsorted(ends, a + mine[np.argmax(data[mine] != eos)]))
            raise _damaged(store, f"document {doc} does not end with eos_id {eos}")
    if "content_sha256" in store.attrs and content_digest(raw, offsets) != store.content_sha256:
        raise _damaged(store, "content_sha256 does not match the tokens and offsets")
    return {"ok": True, "shards": num_shards, "tokens": n, "documents": len(offsets) - 1,
            "max_id": max_id}
