"""What a `prepare` run builds: the tokenizer, the input files and their slices.

The plan is written into the build directory first; a rerun that finds the same plan
keeps the slices already encoded, a different plan is refused (or discarded with
--overwrite) so that parts of two corpora are never mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modtrain.data.format import CHUNK_TOKENS, FORMAT_VERSION, SHARD_CHUNKS, token_dtype
from modtrain.data.tokenizer import Tokenizer
from modtrain.data.write import sources
from modtrain.data.write.filters import parse_filter
from modtrain.data.write.sources import InputFile, Piece
from modtrain.errors import ModtrainError

MAX_SLICE_BYTES = 64_000_000  # the default slice size's bounds (--slice-size auto)
MIN_SLICE_BYTES = 1_000_000
SLICES_PER_WORKER = 4  # enough for the largest-first balance to even out the workers


def auto_slice_bytes(total_bytes: int, workers: int) -> int:
    """About SLICES_PER_WORKER slices per worker, each 1-64 MB: a small corpus still gives
    every worker something to do, a large one is not cut finer than it needs."""
    share = -(-total_bytes // (SLICES_PER_WORKER * max(1, workers)))
    return min(MAX_SLICE_BYTES, max(MIN_SLICE_BYTES, share))


@dataclass
class Plan:
    tokenizer: str
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    jsonl_field: str  # the text's JSON field or column (--text-field)
    slice_bytes: int
    chunk_tokens: int
    shard_chunks: int
    files: list[InputFile]
    slices: list[list[Piece]]
    filter: str = ""  # --filter on the records: COLUMN OP VALUE, or "" for all

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def slice_size(self, index: int) -> int:
        return sum(p.stop - p.start for p in self.slices[index])

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tokenizer,
            "tokenizer_sha256": self.tokenizer_sha256,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "jsonl_field": self.jsonl_field,
            "slice_bytes": self.slice_bytes,
            "chunk_tokens": self.chunk_tokens,
            "shard_chunks": self.shard_chunks,
            "filter": self.filter,
            **sources.to_json(self.files, self.slices),
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        files, slices = sources.from_json(data)
        keys = ("tokenizer", "tokenizer_sha256", "vocab_size", "eos_id", "jsonl_field",
                "slice_bytes", "chunk_tokens", "shard_chunks")
        return cls(**{k: data[k] for k in keys}, files=files, slices=slices,
                   filter=data.get("filter", ""))  # plans written before --filter: none

    def same_work(self, other: Plan, any_slicing: bool = False) -> bool:
        """Same content to encode; the tokenizer may have moved, its hash may not change.
        `any_slicing`: the same content cut into other slices counts as the same."""
        a, b = self.to_json(), other.to_json()
        ignored = ("tokenizer", "slice_bytes", "slices") if any_slicing else ("tokenizer",)
        for key in ignored:
            a.pop(key)
            b.pop(key)
        return a == b

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls.from_json(json.loads(path.read_text()))


def make_plan(
    tokenizer_path: str | Path,
    inputs: list[str | Path],
    *,
    input_format: str = sources.AUTO,
    jsonl_field: str = "text",
    slice_mb: float | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    shard_chunks: int = SHARD_CHUNKS,
    workers: int = 1,
    filter: str | None = None,
) -> Plan:
    """`slice_mb` None: sized for `workers` processes (auto_slice_bytes); `filter`: keep
    only the records where COLUMN OP VALUE holds (see columnar.parse_filter)."""
    if slice_mb is not None and slice_mb <= 0:
        raise ModtrainError(f"--slice-size {slice_mb} must be positive (megabytes per slice)")
    if chunk_tokens < 1 or shard_chunks < 1:
        raise ModtrainError("--chunk-tokens and --shard-chunks must be at least 1")
    if not jsonl_field:
        raise ModtrainError("--text-field is empty; name the field that holds the text")
    parse_filter(filter)
    files = sources.expand_inputs(inputs, input_format)
    whole = [f.path for f in files if sources.FORMATS[f.kind].whole_file_document]
    if filter and whole:
        raise ModtrainError(f"--filter selects records, but {whole[0]} is a text file (one "
                            "document); drop --filter or pass only record formats")
    tokenizer = Tokenizer(tokenizer_path)
    slice_bytes = (auto_slice_bytes(sum(f.size for f in files), workers) if slice_mb is None
                   else max(1, int(slice_mb * 1e6)))
    return Plan(
        tokenizer=str(tokenizer.path),
        tokenizer_sha256=tokenizer.sha256,
        vocab_size=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
        jsonl_field=jsonl_field,
        slice_bytes=slice_bytes,
        chunk_tokens=chunk_tokens,
        shard_chunks=shard_chunks,
        files=files,
        slices=sources.plan_slices(files, slice_bytes),
        filter=filter or "",
    )
