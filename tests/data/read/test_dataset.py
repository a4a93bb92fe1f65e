from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from modtrain.data.read.dataset import (
    BatchLoader,
    TrainSequences,
    ValidationSequences,
    train_val_split,
)
from modtrain.data.read.store import TokenStore
from modtrain.data.write.prepare import prepare_store


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
    for epoch in (0, 1):
        starts = [sequences.start(epoch * n + g) for g in range(n)]
        assert len(set(starts)) == n
        phase = starts[0] % 32
        assert all(s % 32 == phase for s in starts)  # one phase per epoch, windows tile it
        assert max(starts) + 33 <= sequences.split.stop


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


def _rank_samples(loader: BatchLoader, steps: int) -> list[int]:
    """Global indices a rank reads over `steps` steps (the loader's own bookkeeping)."""
    out = []
    for _ in range(steps):
        out.extend(loader.samples_of_step(loader.consumed_samples))
        loader.next_step()
    return out


@pytest.mark.parametrize("dp", [2, 3])
def test_ranks_are_disjoint_and_cover_an_epoch(sequences, dp):
    global_batch = 6 * dp
    steps = -(-sequences.windows_per_epoch // global_batch)
    per_rank = [_rank_samples(BatchLoader(sequences, global_batch, 2, r, dp), steps)
                for r in range(dp)]
    for a in range(dp):
        for b in range(a + 1, dp):
            assert not set(per_rank[a]) & set(per_rank[b])
    union = sorted(g for samples in per_rank for g in samples)
    assert union == list(range(steps * global_batch))  # every sample of the run, once
    # ... which covers every window of epoch 0 exactly once
    windows = {sequences.start(g) for g in union if g < sequences.windows_per_epoch}
    assert len(windows) == sequences.windows_per_epoch


def test_resume_with_another_data_parallel_size(sequences):
    reference = BatchLoader(sequences, 12, 2, 0, 1)
    expected = [np.concatenate(reference.next_step()) for _ in range(5)]
    before = [BatchLoader(sequences, 12, 2, r, 2) for r in range(2)]
    for _ in range(3):
        for loader in before:
            loader.next_step()
    state = before[0].state_dict()
    assert state["consumed_samples"] == 36 and state["epoch"] == 0
    after = [BatchLoader(sequences, 12, 2, r, 3) for r in range(3)]
    for loader in after:
        loader.load_state_dict(state)
    for want in expected[3:]:
        got = np.concatenate([np.concatenate(loader.next_step()) for loader in after])
        assert np.array_equal(got, want)


def test_sample_index_is_cached_beside_the_store(char_store, tmp_path):
    store = TokenStore(char_store)
    train, _ = train_val_split(store.num_tokens, 0.1)
    first = TrainSequences(store, train, 16, seed=11)
    first[first.windows_per_epoch + 1]  # epoch 1
    cached = first.index.path(1)
    assert cached.parent == char_store.with_name(char_store.name + ".index") and cached.is_file()
    again = TrainSequences(TokenStore(char_store), train, 16, seed=11)
    assert isinstance(again.index.starts(1), np.memmap)  # read from the cache, not rebuilt
    assert np.array_equal(again.index.starts(1), first.index.starts(1))
    elsewhere = TrainSequences(store, train, 16, seed=11, cache_dir=str(tmp_path / "idx"))
    assert elsewhere.index.path(0).parent == tmp_path / "idx"
    assert elsewhere.index.key == first.index.key
    assert TrainSequences(store, train, 16, seed=12).index.key != first.index.key


def test_samples_are_the_same_in_another_process(char_store, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from modtrain.data.read.dataset import TrainSequences, train_val_split\n"
        "from modtrain.data.read.store import TokenStore\n"
        "s = TokenStore(sys.argv[1]); tr, _ = train_val_split(s.num_tokens, 0.1)\n"
        "q = TrainSequences(s, tr, 32, seed=5, cache_dir=sys.argv[2])\n"
        "np.save(sys.argv[3], np.stack([q[g] for g in (0, 7, 4000)]))\n"
    )
    out = tmp_path / "other.npy"
    subprocess.run([sys.executable, "-c", code, str(char_store), str(tmp_path / "idx"), str(out)],
                   check=True, timeout=120)
    store = TokenStore(char_store)
    train, _ = train_val_split(store.num_tokens, 0.1)
    here = TrainSequences(store, train, 32, seed=5, cache_dir=str(tmp_path / "fresh"))
    assert np.array_equal(np.load(out), np.stack([here[g] for g in (0, 7, 4000)]))


def test_concurrent_reads_of_one_store_are_exact(tmp_path, char_tokenizer, corpus):
    """The training reads (here two threads, crossing epochs) and evaluation's share one
    TokenStore, whose chunk cache and per-epoch index are swapped under them."""
    path = prepare_store(char_tokenizer, [corpus], tmp_path / "s.zarr", chunk_tokens=1024,
                         shard_chunks=4)
    store = TokenStore(path, cache_chunks=2)  # evicting on nearly every read
    train, val = train_val_split(store.num_tokens, 0.1)
    sequences = TrainSequences(store, train, 32, seed=3, cache_dir=str(tmp_path / "index"))
    windows = ValidationSequences(store, val, 32, max_samples=64)
    whole = TokenStore(path).read(0, store.num_tokens)
    n = sequences.windows_per_epoch
    jobs = [[(sequences, g + e * n) for g in range(200) for e in (0, 1)],
            [(sequences, g + e * n) for g in range(200) for e in (1, 0)],
            [(windows, i) for i in range(len(windows))] * 6]

    def window(source, i):
        start = sequences.start(i) if source is sequences else windows.starts[i]
        return whole[start : start + 33]

    expected = [[window(source, i) for source, i in job] for job in jobs]  # one thread
    wrong: list[object] = []

    def read(job, want):
        try:
            wrong.extend(i for (source, i), w in zip(job, want)
                         if not np.array_equal(source[i], w))
        except Exception as e:  # a thread's error would otherwise only be printed
            wrong.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often
    try:
        threads = [threading.Thread(target=read, args=(job, want))
                   for job, want in zip(jobs, expected)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []
