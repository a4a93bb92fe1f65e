from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from modtrain.data.format import shard_file
from modtrain.data.read.store import TokenStore
from modtrain.data.read.verify import verify_store
from modtrain.data.write.build import write_store
from modtrain.data.write.prepare import prepare_store
from modtrain.errors import ModtrainError
from tests.conftest import cli_env


@pytest.fixture()
def sharded(tmp_path, char_tokenizer, corpus):
    """The corpus in shards of 8,192 tokens (13 shard files)."""
    return prepare_store(char_tokenizer, [corpus], tmp_path / "s.zarr", chunk_tokens=4096,
                         shard_chunks=2)


def _inspect(store, *flags):
    return subprocess.run([sys.executable, "-m", "modtrain", "data", "inspect", str(store),
                           *flags], env=cli_env(), capture_output=True, text=True, timeout=120)


def test_a_sound_store_verifies(sharded):
    proc = _inspect(sharded, "--verify")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["verify"] == {"ok": True, "shards": 13, "tokens": info["num_tokens"],
                              "documents": 1, "max_id": info["vocab_size"] - 1}
    assert info["num_shards"] == 13 and info["tokens_array"]["shards"] == [8192]


def test_a_corrupted_shard_is_detected(sharded):
    store = TokenStore(sharded)
    path = shard_file(store.path, store.tokens, 5)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40  # one flipped bit inside a compressed chunk
    path.write_bytes(bytes(data))
    with pytest.raises(ModtrainError, match=r"1 shard\(s\) fail their SHA-256 checksum: \[5\]"):
        verify_store(TokenStore(sharded))
    # An ordinary read of that data fails loudly too (crc32c per chunk), never silently.
    fresh = TokenStore(sharded)
    with pytest.raises(ModtrainError, match="cannot be read at tokens chunk .* --verify"):
        fresh.read(5 * 8192, 6 * 8192)
    proc = _inspect(sharded, "--verify")
    assert proc.returncode == 2
    assert proc.stderr.startswith("modtrain: error: store ") and proc.stderr.count("\n") == 1
    assert "tokens/c/5" in proc.stderr


def test_a_missing_shard_is_detected(sharded):
    store = TokenStore(sharded)
    shard_file(store.path, store.tokens, 12).unlink()
    with pytest.raises(ModtrainError, match=r"1 shard\(s\) missing: \[12\] \(first: "
                                            r"tokens/c/12\); the store is damaged"):
        verify_store(TokenStore(sharded))


def test_missing_and_corrupted_shards_are_told_apart(sharded):
    store = TokenStore(sharded)
    shard_file(store.path, store.tokens, 3).unlink()
    path = shard_file(store.path, store.tokens, 7)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ModtrainError, match=r"1 shard\(s\) missing: \[3\] .*; 1 shard\(s\) "
                                            r"fail their SHA-256 checksum: \[7\]"):
        verify_store(TokenStore(sharded))


def test_ids_beyond_the_vocabulary_are_detected(tmp_path):
    docs = [np.array([5, 6, 1]), np.array([7, 70, 1])]
    out = write_store(tmp_path / "v.zarr", docs, vocab_size=67, tokenizer_sha256="0" * 64,
                      eos_id=1, sources=["made up"])
    with pytest.raises(ModtrainError, match="token 4 has id 70, not below vocab_size 67"):
        verify_store(TokenStore(out))
    bad_eos = write_store(tmp_path / "e.zarr", [np.array([5, 6, 1]), np.array([7, 8])],
                          vocab_size=67, tokenizer_sha256="0" * 64, eos_id=1, sources=["x"])
    with pytest.raises(ModtrainError, match="document 1 does not end with eos_id 1"):
        verify_store(TokenStore(bad_eos))
