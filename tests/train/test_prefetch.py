"""The prefetching loader: the same batches and states as the plain one, its errors, and runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modtrain.config import load_config
from modtrain.data.format import shard_file
from modtrain.data.read.dataset import BatchLoader, TrainSequences, train_val_split
from modtrain.data.read.store import TokenStore
from modtrain.data.write.prepare import prepare_store
from modtrain.errors import ModtrainError
from modtrain.train.prefetch import PrefetchLoader
from modtrain.train.trainer import train
from tests.train.helpers import step_losses, tiny_config


def _sequences(path) -> TrainSequences:
    store = TokenStore(path)
    split, _ = train_val_split(store.num_tokens, 0.1)
    return TrainSequences(store, split, seq_length=32, seed=5)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("micro,rank,dp", [(4, 0, 1), (2, 1, 2)])
def test_the_same_batches_and_states_as_without_prefetch_across_a_load(char_store, micro,
                                                                         rank, dp):
    seq = _sequences(char_store)
    plain = BatchLoader(seq, 8, micro, rank, dp)
    ahead = PrefetchLoader(BatchLoader(seq, 8, micro, rank, dp))
    try:
        saved = []
        for _ in range(3):
            assert _same(plain.next_step(), ahead.next_step())
            assert plain.state_dict() == ahead.state_dict()  # the steps handed out only
            saved.append(plain.state_dict())
        # Back to step 1 while step 4 is being read ahead: that read is dropped.
        plain.load_state_dict(saved[0])
        ahead.load_state_dict(saved[0])
        assert ahead.state_dict() == saved[0]
        for _ in range(3):
            assert _same(plain.next_step(), ahead.next_step())
            assert plain.state_dict() == ahead.state_dict()
    finally:
        ahead.close()


def test_nothing_is_read_ahead_past_the_end_of_the_run(char_store):
    ahead = PrefetchLoader(BatchLoader(_sequences(char_store), 8, 4, 0, 1), end=16)
    try:
        ahead.next_step()
        assert ahead._ahead is not None and ahead._ahead[0] == 8
        ahead.next_step()  # the last step: no read of a step the run never takes
        assert ahead._ahead is None
        ahead.next_step()  # a step past the end still reads (the loop decides)
    finally:
        ahead.close()


def test_a_failed_read_ahead_is_raised_at_the_next_step_as_the_same_error(tmp_path,
                                                                          char_tokenizer,
                                                                          corpus):
    path = prepare_store(char_tokenizer, [corpus], tmp_path / "s.zarr", chunk_tokens=1024,
                         shard_chunks=1)
    seq = _sequences(path)
    reference = BatchLoader(seq, 8, 4, 0, 1)
    shards = [{seq.start(g) // 1024, (seq.start(g) + 32) // 1024}
              for g in reference.samples_of_step(8)]
    first = set().union(*[{seq.start(g) // 1024, (seq.start(g) + 32) // 1024}
                          for g in reference.samples_of_step(0)])
    lost = min(set().union(*shards) - first)  # read by step 2 only
    shard_file(path, seq.store.tokens, lost).unlink()

    with pytest.raises(ModtrainError) as expected:
        reference.rows_of_step(8)
    ahead = PrefetchLoader(BatchLoader(seq, 8, 4, 0, 1))
    try:
        ahead.next_step()  # step 1 reads; step 2 fails in the worker thread
        with pytest.raises(ModtrainError) as got:
            ahead.next_step()
        assert str(got.value) == str(expected.value) and "\n" not in str(got.value)
        assert ahead.state_dict()["consumed_samples"] == 8  # step 2 was not handed out
    finally:
        ahead.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_rows_are_pinned_on_cuda(char_store):
    ahead = PrefetchLoader(BatchLoader(_sequences(char_store), 8, 4, 0, 1),
                           pin_device=torch.device("cuda", torch.cuda.current_device()))
    try:
        batches = ahead.next_step()
        assert all(isinstance(b, torch.Tensor) and b.is_pinned() for b in batches)
    finally:
        ahead.close()


def test_pinning_is_refused_off_cuda(char_store):
    with pytest.raises(ValueError, match="for CUDA"):
        PrefetchLoader(BatchLoader(_sequences(char_store), 8, 4, 0, 1),
                       pin_device=torch.device("cpu"))


@pytest.mark.slow
def test_a_run_loses_the_same_with_and_without_prefetch(tmp_path, dist, char_store,
                                                       char_tokenizer):
    losses = {}
    for prefetch in ("true", "false"):
        cfg = tiny_config(tmp_path, char_store, char_tokenizer, f"prefetch-{prefetch}",
                          micro=4, steps=4)
        train(load_config(cfg, [f"data.prefetch={prefetch}"]))
        losses[prefetch] = step_losses(tmp_path / f"prefetch-{prefetch}")
    assert len(losses["true"]) == 4
    assert losses["true"] == losses["false"]  # bitwise: JSON floats round-trip exactly
