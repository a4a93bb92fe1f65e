from __future__ import annotations

import numpy as np
import pytest

from modtrain.data.dataset import (
    BatchLoader,
    TrainSequences,
    ValidationSequences,
    train_val_split,
)
from modtrain.data.store import TokenStore


@pytest.fixture()
def sequences(char_store):
    store = TokenStore(char_store)
    train, _ = train_val_split(store.num_tokens, 0.1)
    return TrainSequences(store, train, seq_length=32, seed=7)


def test_samples_are_deterministic_and_inside_the_training_split(char_store, sequences):
    store = TokenStore(char_store)
    train, val = train_val_split(store.num_tokens, 0.1)
    again = TrainSequences(store, train, 32, seed=7)
    for g in (0, 5, sequences.windows_per_epoch + 3):
        assert np.array_equal(sequences[g], again[g])
        assert sequences[g].shape == (33,)
    other_seed = TrainSequences(store, train, 32, seed=8)
    assert not np.array_equal(sequences[0], other_seed[0])
    assert train.stop == val.start


def test_epoch_visits_each_window_once(sequences):
    n = sequences.windows_per_epoch
    starts = set()
    for g in range(n):
        sequences[g]
        starts.add(sequences._phase + int(sequences._order[g]) * 32)
    assert len(starts) == n


@pytest.mark.parametrize("dp", [2, 3])
def test_ranks_read_disjoint_samples_that_cover_the_global_batch(sequences, dp):
    global_batch, micro = 12, 2
    single = BatchLoader(sequences, global_batch, micro, 0, 1)
    ranks = [BatchLoader(sequences, global_batch, micro, r, dp) for r in range(dp)]
    for _ in range(3):
        whole = np.concatenate(single.next_step())
        parts = np.concatenate([np.concatenate(loader.next_step()) for loader in ranks])
        assert np.array_equal(whole, parts)  # rank r holds the r-th slice of the global batch


def test_resume_gives_the_same_batches(sequences):
    uninterrupted = BatchLoader(sequences, 8, 4, 0, 1)
    for _ in range(3):
        uninterrupted.next_step()
    state = uninterrupted.state_dict()
    expected = [uninterrupted.next_step() for _ in range(2)]
    resumed = BatchLoader(sequences, 8, 4, 0, 1)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_step()
        assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_validation_windows_are_fixed_and_held_out(char_store):
    store = TokenStore(char_store)
    _, val = train_val_split(store.num_tokens, 0.1)
    windows = ValidationSequences(store, val, 32, max_samples=10)
    assert len(windows) == 10
    assert all(s >= val.start for s in windows.starts)
    assert windows.starts[-1] + 33 <= val.stop
