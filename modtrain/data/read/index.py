"""The global sample index: where each training sample of an epoch starts.

Documents are already packed into one stream, each ending with EOS. In epoch e the
training split is cut into windows of seq_length + 1 tokens (inputs + shifted labels;
neighbours overlap by one token) at a phase drawn from (seed, stream, e), and the windows
are visited in a permutation drawn from the same generator. The start of every window, in
visiting order, is saved as STORE.zarr.index/KEY-epochNNNNN.npy and memory-mapped, so
data-parallel ranks on a node share one copy through the page cache and a restart does
not recompute it. KEY covers everything the index depends on, the store's content hash
included, so a rebuilt store never reuses a stale index.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modtrain.data.read.store import TokenStore

INDEX_VERSION = 1
# One thread at a time opens an epoch's index: numpy parses the .npy header with
# ast.literal_eval, which on CPython 3.11 can fail with "SystemError: AST constructor
# recursion depth mismatch" when two threads parse at once (python/cpython#106905). The
# prefetching thread and the main thread (validation, evaluation) may open one together.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Split:
    start: int
    stop: int


def train_val_split(num_tokens: int, val_fraction: float) -> tuple[Split, Split]:
    """The first 1 - val_fraction of the stream trains, the tail is held out."""
    boundary = int(num_tokens * (1.0 - val_fraction))
    return Split(0, boundary), Split(boundary, num_tokens)


def default_cache_dir(store: TokenStore) -> Path:
    return store.path.with_name(store.path.name + ".index")


def build_epoch(split: Split, seq_length: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    """Start tokens of epoch `epoch`'s samples, in the order they are consumed."""
    n = (split.stop - split.start - seq_length) // seq_length
    rng = np.random.default_rng([seed, stream, epoch])
    phase = int(rng.integers(0, seq_length))
    order = rng.permutation(n)
    dtype = np.uint32 if split.stop < 2**32 else np.uint64
    return (split.start + phase + order.astype(np.uint64) * seq_length).astype(dtype)


class SampleIndex:
    """Per-epoch sample starts, built on first use and cached (if the cache is writable)."""

    def __init__(self, store: TokenStore, split: Split, seq_length: int, seed: int,
                 stream: int = 0, cache_dir: str | Path | None = None) -> None:
        self.split, self.seq_length, self.seed, self.stream = split, seq_length, seed, stream
        self.samples_per_epoch = (split.stop - split.start - seq_length) // seq_length
        key = json.dumps([INDEX_VERSION, store.content_sha256, split.start, split.stop,
                          seq_length, seed, stream])
        self.key = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(store)
        # (epoch, its starts) in one attribute: a reader in another thread never sees one
        # epoch's number with another's starts
        self._current: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.uint32))

    def path(self, epoch: int) -> Path:
        return self.cache_dir / f"{self.key}-epoch{epoch:05d}.npy"

    def starts(self, epoch: int) -> np.ndarray:
        current = self._current
        if current[0] != epoch:
            with _LOAD_LOCK:
                current = self._current  # another thread may have loaded it meanwhile
                if current[0] != epoch:
                    current = (epoch, self._load(epoch))
                    self._current = current
        return current[1]

    def _load(self, epoch: int) -> np.ndarray:
        path = self.path(epoch)
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            pass  # not cached yet (or a damaged file: rebuilt below)
        starts = build_epoch(self.split, self.seq_length, self.seed, self.stream, epoch)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # Unique temporary name: several ranks may build the same epoch at once; the
            # contents are identical, so whichever rename lands last is fine.
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as f:
                np.save(f, starts)
            os.replace(tmp, path)
        except OSError:
            pass  # read-only location: the index is just as exact from memory
        return starts
