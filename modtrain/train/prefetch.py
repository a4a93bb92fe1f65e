"""The next step's rows read in one background thread while this step computes (data.prefetch).

The wrapped loader's state counts only the steps handed out, so what a checkpoint saves, and
a resume, are those of a loader without prefetch. A read ahead is keyed by the consumed
samples it starts at: after `load_state_dict` (or any other change of position) it no longer
matches and is dropped; nothing is read ahead past the run's last step. One worker runs every
training read, in order, so the loader's sequences are never read by two threads at once
(evaluation reads the same stores from the main thread: TokenStore locks its chunk cache, the
sample index swaps epochs atomically). On CUDA the worker pins the rows, and
`steps._to_device` copies them with non_blocking=True.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from modtrain.data.read.dataset import BatchLoader
from modtrain.train.steps import Batch


class PrefetchLoader:
    """A BatchLoader that reads step n + 1 while step n runs; same batches, same state."""

    def __init__(self, loader: BatchLoader, pin_device: torch.device | None = None,
                 end: int | None = None) -> None:
        if pin_device is not None and pin_device.type != "cuda":
            raise ValueError(f"pinned memory is for CUDA copies, not {pin_device}")
        self.loader = loader
        self.pin_device = pin_device
        self.end = end  # the samples the run consumes: nothing is read ahead past them
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="modtrain-prefetch",
                                        initializer=self._start_thread)
        self._ahead: tuple[int, Future[Batch]] | None = None  # (its first sample, the read)

    def _start_thread(self) -> None:
        if self.pin_device is not None:  # pin on the rank's device, not on cuda:0
            torch.cuda.set_device(self.pin_device)

    def _read(self, consumed: int) -> Batch:
        rows = self.loader.rows_of_step(consumed)
        return rows if self.pin_device is None else torch.from_numpy(rows).pin_memory()

    def next_step(self) -> list[Batch]:
        """The next step's micro-batches; an error of the read is raised here, as it was."""
        consumed = self.loader.consumed_samples
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != consumed:
            if ahead is not None:
                ahead[1].cancel()  # a read already running finishes first: one worker
            ahead = (consumed, self._pool.submit(self._read, consumed))
        rows = ahead[1].result()
        self.loader.consumed_samples = consumed + self.loader.global_batch
        following = self.loader.consumed_samples
        if self.end is None or following < self.end:
            self._ahead = (following, self._pool.submit(self._read, following))
        return self.loader.split(rows)

    @property
    def consumed_samples(self) -> int:
        return self.loader.consumed_samples

    def state_dict(self) -> dict[str, int | str]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        self.loader.load_state_dict(state)
        if self._ahead is not None:  # read for the old position
            self._ahead[1].cancel()
            self._ahead = None

    def close(self) -> None:
        """Stop the worker (after the read it may be running)."""
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)
