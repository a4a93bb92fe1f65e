"""Fixed-length training sequences, and the loader that hands each rank its share.

Global sample g is a pure function of (data, seq_length, seed): the same whatever the
number of data-parallel ranks. Each optimizer step consumes `global_batch` consecutive
global samples; rank r takes the r-th contiguous slice of them. So the ranks read
disjoint samples that together cover the stream, and the loader's whole state is the
number of consumed samples (plus, for the record, the epoch): a resumed run, with the
same or another data-parallel size, continues at exactly the next batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Protocol, Self, TypeVar

import numpy as np

from modtrain import log
from modtrain.data.read.index import SampleIndex, Split, train_val_split
from modtrain.data.read.store import TokenStore
from modtrain.errors import ModtrainError

__all__ = ["BatchLoader", "Sequences", "Split", "TrainSequences", "ValidationSequences",
           "ValidationSet", "train_val_split"]


R = TypeVar("R", bound="Rows")


class Rows(Protocol):
    """A step's rows: a numpy array, or a torch tensor (pinned) that the loader never imports."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice) -> Self: ...


class Sequences(Protocol):
    """What the loader reads: global sample index -> [seq_length + 1] ids."""

    fingerprint: str

    def __getitem__(self, global_index: int) -> np.ndarray: ...

    def epoch_of(self, consumed: int) -> int: ...


class TrainSequences:
    """Packed windows of one store's training split, in the order of its sample index."""

    def __init__(self, store: TokenStore, split: Split, seq_length: int, seed: int,
                 stream: int = 0, cache_dir: str | None = None) -> None:
        self.store = store
        self.split = split
        self.seq_length = seq_length
        self.index = SampleIndex(store, split, seq_length, seed, stream, cache_dir)
        self.windows_per_epoch = self.index.samples_per_epoch
        if self.windows_per_epoch < 1:
            raise ModtrainError(
                f"the training split of {store.path} has {split.stop - split.start} tokens, "
                f"too few for sequences of {seq_length}; add data or lower data.seq_length"
            )
        self.fingerprint = self.index.key

    def start(self, global_index: int) -> int:
        epoch, i = divmod(int(global_index), self.windows_per_epoch)
        return int(self.index.starts(epoch)[i])

    def __getitem__(self, global_index: int) -> np.ndarray:
        start = self.start(global_index)
        return self.store.read(start, start + self.seq_length + 1)

    def epoch_of(self, consumed: int) -> int:
        return consumed // self.windows_per_epoch


class ValidationSequences:
    """A fixed, evenly spaced set of windows from the held-out split."""

    def __init__(self, store: TokenStore, split: Split, seq_length: int, max_samples: int):
        available = (split.stop - split.start - 1) // seq_length
        if available < 1:
            raise ModtrainError(
                f"the validation split of {store.path} is too small for sequences of "
                f"{seq_length}; raise data.val_fraction or add data"
            )
        count = max(1, min(available, max_samples))
        stride = available // count
        self.starts = [split.start + i * stride * seq_length for i in range(count)]
        self.store = store
        self.seq_length = seq_length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.starts[i]
        return self.store.read(s, s + self.seq_length + 1)


class ValidationSet:
    """Several stores' validation windows, one after the other; `names` the sources'."""

    def __init__(self, parts: list[ValidationSequences], names: list[str] | None = None
                 ) -> None:
        self.parts = parts
        self.names = names or [str(i) for i in range(len(parts))]
        self._ends = np.cumsum([len(p) for p in parts])

    def sources(self) -> list[tuple[str, range]]:
        """Each source's name and the range of its windows in this set."""
        starts = [0, *(int(e) for e in self._ends[:-1])]
        return [(n, range(a, int(b))) for n, a, b in zip(self.names, starts, self._ends)]

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self._ends, i, side="right"))
        return self.parts[part][i - (int(self._ends[part - 1]) if part else 0)]


class BatchLoader:
    """This rank's micro-batches for each step; state = consumed global samples."""

    def __init__(
        self, sequences: Sequences, global_batch: int, micro_batch: int,
        dp_rank: int, dp_size: int,
    ) -> None:
        if global_batch % (micro_batch * dp_size):
            raise ModtrainError(
                f"train.global_batch_size={global_batch} is not divisible by "
                f"train.micro_batch_size x data-parallel size = {micro_batch} x {dp_size}"
            )
        self.sequences = sequences
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = 0

    def samples_of_step(self, consumed: int) -> range:
        """Global indices this rank reads in the step that starts after `consumed` samples."""
        per_rank = self.global_batch // self.dp_size
        first = consumed + self.dp_rank * per_rank
        return range(first, first + per_rank)

    def rows_of_step(self, consumed: int) -> np.ndarray:
        """This rank's rows ([global_batch / dp, seq_length + 1]) of the step that starts
        after `consumed` samples. It only reads, so a thread may read a step ahead."""
        return np.stack([self.sequences[g] for g in self.samples_of_step(consumed)])

    def split(self, rows: R) -> list[R]:
        """A step's rows cut into its micro-batches ([micro, seq_length + 1] each)."""
        return [rows[m : m + self.micro_batch] for m in range(0, len(rows), self.micro_batch)]

    def next_step(self) -> list[np.ndarray]:
        """The micro-batches ([micro, seq_length + 1] each) of the next optimizer step."""
        rows = self.rows_of_step(self.consumed_samples)
        self.consumed_samples += self.global_batch
        return self.split(rows)

    def close(self) -> None:
        """Nothing to release (train/prefetch.py's loader stops its thread here)."""

    def state_dict(self) -> dict[str, int | str]:
        return {
            "epoch": self.sequences.epoch_of(self.consumed_samples),
            "consumed_samples": self.consumed_samples,
            "data_fingerprint": self.sequences.fingerprint,
        }

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        consumed = int(state["consumed_samples"])
        saved = state.get("data_fingerprint")
        if saved is not None and saved != self.sequences.fingerprint:
            log.warning("the data (stores, weights, seq_length or seed) differ from the "
                        f"checkpoint's; continuing at sample {consumed} of the new data")
        self.consumed_samples = consumed


def fingerprint(parts: Sequence[object]) -> str:
    """A short digest of JSON-able parts (store fingerprints, weights, phases)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
