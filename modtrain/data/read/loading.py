"""What training reads: this rank's batch loader and the validation windows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modtrain.config import Config
from modtrain.data.read.blend import BlendedSequences, block_counts
from modtrain.data.read.dataset import (
    BatchLoader,
    TrainSequences,
    ValidationSequences,
    ValidationSet,
    train_val_split,
)
from modtrain.data.read.store import TokenStore
from modtrain.errors import ModtrainError


@dataclass
class DataSources:
    """The checked stores of a run and their blend weights (None: one store)."""

    stores: list[TokenStore]
    weights: list[float] | None = None


def store_paths(config: Config) -> list[str]:
    d = config.data
    if d.weights and not d.stores:
        raise ModtrainError("data.weights needs data.stores: list the stores to blend")
    if d.stores and d.weights and len(d.weights) != len(d.stores):
        raise ModtrainError(
            f"data.weights has {len(d.weights)} entries for {len(d.stores)} data.stores; "
            "give one weight per store"
        )
    return list(d.stores) if d.stores else [d.store]


def open_sources(config: Config) -> DataSources:
    stores = [TokenStore(p) for p in store_paths(config)]
    d = config.data
    if not d.stores:
        return DataSources(stores)
    # no weights: each store in proportion to its size, as if concatenated
    sizes = [float(s.num_tokens) for s in stores]
    weights = [float(w) for w in d.weights] if d.weights else sizes
    block_counts(weights)  # weights that cannot be honoured fail here, before training
    return DataSources(stores, weights)


def build_training_data(
    config: Config,
    store: TokenStore | DataSources,
    dp_rank: int,
    dp_size: int,
    log: Callable[[str], None] | None = None,
) -> tuple[BatchLoader, ValidationSequences | ValidationSet]:
    """`store`: what check_inputs returned (or a single TokenStore)."""
    t, d = config.train, config.data
    sources = store if isinstance(store, DataSources) else DataSources([store])
    cache = d.index_cache or None
    val_total = t.eval_batches * t.global_batch_size
    if sources.weights is None:
        (only,) = sources.stores
        train_split, val_split = train_val_split(only.num_tokens, d.val_fraction)
        sequences = TrainSequences(only, train_split, d.seq_length, config.run.seed,
                                   cache_dir=cache)
        loader = BatchLoader(sequences, t.global_batch_size, t.micro_batch(dp_size), dp_rank,
                             dp_size)
        return loader, ValidationSequences(only, val_split, d.seq_length, val_total)

    parts, vals = [], []
    total_w = sum(sources.weights)
    for i, (s, w) in enumerate(zip(sources.stores, sources.weights)):
        train_split, val_split = train_val_split(s.num_tokens, d.val_fraction)
        parts.append(TrainSequences(s, train_split, d.seq_length, config.run.seed, stream=i,
                                    cache_dir=cache))
        vals.append(ValidationSequences(s, val_split, d.seq_length,
                                        max(1, round(val_total * w / total_w))))
    blend = BlendedSequences(parts, sources.weights)
    loader = BatchLoader(blend, t.global_batch_size, t.micro_batch(dp_size), dp_rank, dp_size)
    if dp_rank == 0:
        (log or print)(describe_blend(blend, t.steps * t.global_batch_size))
    return loader, ValidationSet(vals)


def describe_blend(blend: BlendedSequences, planned: int) -> str:
    """One line: each store's target weight, realised share and passes over the run."""
    shares = blend.proportions(planned)
    taken = blend.schedule.taken(planned)
    total_w = sum(blend.weights)
    items = [
        f"{Path(p.store.path).name} {share:.4f} (weight {w / total_w:.4f}, "
        f"{n / p.windows_per_epoch:.2f} epochs)"
        for p, w, share, n in zip(blend.parts, blend.weights, shares, taken)
    ]
    return f"data blend over {planned:,} samples: " + ", ".join(items)
