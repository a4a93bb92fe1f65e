"""Property-based: a store with random damage to its shard files or metadata reads
correctly or fails with a one-line ModtrainError, never another exception or a wrong token."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modtrain.data.read.store import TokenStore
from modtrain.data.write.build import write_store
from modtrain.errors import ModtrainError

VOCAB = 300  # two-byte ids


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """5 documents, 3 shards of 2 chunks of 512 tokens; its tokens and offsets."""
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(2, VOCAB, n), 1) for n in (700, 300, 900, 150, 800)]
    path = write_store(tmp_path_factory.mktemp("pristine") / "s.zarr", docs,
                       vocab_size=VOCAB, tokenizer_sha256="0" * 64, eos_id=1,
                       sources=["made up"], chunk_tokens=512, shard_chunks=2)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    return path, np.concatenate(docs), np.cumsum([0] + [len(d) for d in docs]), files


def _read(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        store = TokenStore(path)
        tokens = store.read(0, store.num_tokens)
        return tokens, store.doc_offsets
    except ModtrainError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return None


damage = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("append"), st.just(0.0), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.just(0.0), st.just(0)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damage_is_caught_or_harmless(pristine, data):
    source, tokens, offsets, files = pristine
    hits = data.draw(st.lists(st.tuples(st.sampled_from(files), damage), min_size=1,
                              max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        shutil.copytree(source, path)
        for name, (kind, where, byte) in hits:
            f = path / name
            if not f.is_file():
                continue
            raw = bytearray(f.read_bytes())
            at = int(where * len(raw)) if raw else 0
            if kind == "flip" and raw:
                raw[at] ^= byte
            elif kind == "truncate":
                del raw[at:]
            elif kind == "append":
                raw.append(byte)
            if kind == "delete":
                f.unlink()
            else:
                f.write_bytes(bytes(raw))
        got = _read(path)
    if got is not None:  # read without an error: then exactly the original
        assert np.array_equal(got[0], tokens) and np.array_equal(got[1], offsets)
