"""What training reads: this rank's batch loader and the validation windows."""

from __future__ import annotations

from modtrain.config import Config
from modtrain.data.dataset import BatchLoader, TrainSequences, ValidationSequences, train_val_split
from modtrain.data.store import TokenStore


def build_training_data(
    config: Config, store: TokenStore, dp_rank: int, dp_size: int
) -> tuple[BatchLoader, ValidationSequences]:
    t, d = config.train, config.data
    train_split, val_split = train_val_split(store.num_tokens, d.val_fraction)
    sequences = TrainSequences(store, train_split, d.seq_length, config.run.seed)
    loader = BatchLoader(sequences, t.global_batch_size, t.micro_batch_size, dp_rank, dp_size)
    val = ValidationSequences(store, val_split, d.seq_length, t.eval_batches * t.global_batch_size)
    return loader, val
