"""Fixed-length training sequences from a token store, deterministic from a seed.

The token stream is split into a training range and a held-out validation tail. In
epoch e the training range is cut into windows of seq_length + 1 tokens at a phase
drawn from (seed, e), and the windows are visited in a permutation drawn from the same
generator. Global sample g is window g mod n of epoch g div n, whatever the number of
data-parallel ranks, so the loader's whole state is the count of consumed samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modtrain.data.store import TokenStore
from modtrain.errors import ModtrainError


@dataclass(frozen=True)
class Split:
    start: int
    stop: int


def train_val_split(num_tokens: int, val_fraction: float) -> tuple[Split, Split]:
    boundary = int(num_tokens * (1.0 - val_fraction))
    return Split(0, boundary), Split(boundary, num_tokens)


class TrainSequences:
    """Global sample index -> [seq_length + 1] token window (inputs + shifted labels)."""

    def __init__(self, store: TokenStore, split: Split, seq_length: int, seed: int) -> None:
        self.store = store
        self.split = split
        self.seq_length = seq_length
        self.seed = seed
        self.windows_per_epoch = (split.stop - split.start - seq_length) // seq_length
        if self.windows_per_epoch < 1:
            raise ModtrainError(
                f"the training split of {store.path} has {split.stop - split.start} tokens, "
                f"too few for sequences of {seq_length}; add data or lower data.seq_length"
            )
        self._epoch = -1
        self._order: np.ndarray | None = None
        self._phase = 0

    def _plan(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._phase = int(rng.integers(0, self.seq_length))
            self._order = rng.permutation(self.windows_per_epoch)
            self._epoch = epoch

    def __getitem__(self, global_index: int) -> np.ndarray:
        epoch, i = divmod(int(global_index), self.windows_per_epoch)
        self._plan(epoch)
        start = self.split.start + self._phase + int(self._order[i]) * self.seq_length
        return self.store.read(start, start + self.seq_length + 1)


class ValidationSequences:
    """A fixed, evenly spaced set of windows from the held-out split."""

    def __init__(self, store: TokenStore, split: Split, seq_length: int, max_samples: int):
        available = (split.stop - split.start - 1) // seq_length
        if available < 1:
            raise ModtrainError(
                f"the validation split of {store.path} is too small for sequences of "
                f"{seq_length}; raise data.val_fraction or add data"
            )
        count = min(available, max_samples)
        stride = available // count
        self.starts = [split.start + i * stride * seq_length for i in range(count)]
        self.store = store
        self.seq_length = seq_length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.starts[i]
        return self.store.read(s, s + self.seq_length + 1)


class BatchLoader:
    """This rank's micro-batches for each step; state = consumed global samples."""

    def __init__(
        self, sequences: TrainSequences, global_batch: int, micro_batch: int,
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

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp_size)

    def next_step(self) -> list[np.ndarray]:
        """The micro-batches ([micro, seq_length + 1] each) of the next optimizer step."""
        per_rank = self.global_batch // self.dp_size
        base = self.consumed_samples + self.dp_rank * per_rank
        micro = []
        for m in range(self.accumulation_steps):
            first = base + m * self.micro_batch
            micro.append(np.stack([self.sequences[first + j] for j in range(self.micro_batch)]))
        self.consumed_samples += self.global_batch
        return micro

    def state_dict(self) -> dict[str, int]:
        return {
            "consumed_samples": self.consumed_samples,
            "epoch": self.consumed_samples // self.sequences.windows_per_epoch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed_samples = int(state["consumed_samples"])
