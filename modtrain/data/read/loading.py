"""What training reads: this rank's batch loader and the validation windows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modtrain.config import Config
from modtrain.data.read.blend import BlendedSequences, PhasedSchedule, block_counts
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
    phases: list[tuple[int | None, list[float]]] | None = None  # a schedule; ends in steps


def weight_phases(weights: list) -> list[tuple[int | None, list[float]]] | None:
    """data.weights as a schedule [{until: STEP, weights: [...]}, ..., {weights: [...]}] ->
    [(until, weights)], or None for plain weights [w, ...]."""
    if not any(isinstance(w, dict) for w in weights):
        if not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights):
            raise ModtrainError(f"data.weights {weights!r} must be numbers, one per store, "
                                "or a schedule [{until: STEP, weights: [...]}, ...]")
        return None
    phases: list[tuple[int | None, list[float]]] = []
    for w in weights:
        if not isinstance(w, dict) or not set(w) <= {"until", "weights"} or "weights" not in w:
            raise ModtrainError(f"data.weights schedule entry {w!r} is not {{until: STEP, "
                                "weights: [w, ...]} (no 'until' in the last)")
        until, ws = w.get("until"), w["weights"]
        if until is not None and (not isinstance(until, int) or isinstance(until, bool)):
            raise ModtrainError(f"data.weights schedule: until {until!r} must be a step number")
        if not isinstance(ws, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in ws):
            raise ModtrainError(f"data.weights schedule: weights {ws!r} must be a list of "
                                "numbers, one per store")
        phases.append((until, [float(x) for x in ws]))
    return phases


def store_paths(config: Config) -> list[str]:
    d = config.data
    if d.weights and not d.stores:
        raise ModtrainError("data.weights needs data.stores: list the stores to blend")
    phases = weight_phases(d.weights) or []
    lists: list[list] = [w for _, w in phases] or ([d.weights] if d.stores and d.weights else [])
    for ws in lists:
        if len(ws) == len(d.stores):
            continue
        raise ModtrainError(
            f"data.weights has {len(ws)} entries for {len(d.stores)} data.stores; "
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
    phases = weight_phases(d.weights)
    if phases:
        for _, w in phases:
            block_counts(w)
        PhasedSchedule(phases)  # its ends are checked here, before training
        return DataSources(stores, phases[-1][1], phases)
    # plain numbers here (weight_phases returned None: it checked every entry)
    weights = [float(w) for w in d.weights if not isinstance(w, dict)] if d.weights else sizes
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

    parts, splits = [], []
    for i, s in enumerate(sources.stores):
        train_split, val_split = train_val_split(s.num_tokens, d.val_fraction)
        parts.append(TrainSequences(s, train_split, d.seq_length, config.run.seed, stream=i,
                                    cache_dir=cache))
        splits.append(val_split)
    planned = t.steps * t.global_batch_size
    phases = None if sources.phases is None else [
        (None if e is None else e * t.global_batch_size, w) for e, w in sources.phases]
    blend = BlendedSequences(parts, sources.weights, phases)
    # validation: each store by its weight; under a schedule, by its share of the whole run
    weights = sources.weights if phases is None else list(blend.proportions(planned))
    total_w = sum(weights)
    vals = [ValidationSequences(s, v, d.seq_length, max(1, round(val_total * w / total_w)))
            for s, v, w in zip(sources.stores, splits, weights)]
    loader = BatchLoader(blend, t.global_batch_size, t.micro_batch(dp_size), dp_rank, dp_size)
    if dp_rank == 0:
        (log or print)(describe_blend(blend, planned))
    return loader, ValidationSet(vals, source_names([str(s.path) for s in sources.stores]))


def source_names(paths: list[str]) -> list[str]:
    """Each store's name in metrics (val_loss/NAME): its file name without .zarr; names
    that two stores share get their position in data.stores appended (web-0, web-1)."""
    names = [Path(p).name.removesuffix(".zarr") for p in paths]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


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
