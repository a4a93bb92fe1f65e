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
from modtrain.data.write.sources import InputFile, Piece
from modtrain.errors import ModtrainError


@dataclass
class Plan:
    tokenizer: str
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    jsonl_field: str
    slice_bytes: int
    chunk_tokens: int
    shard_chunks: int
    files: list[InputFile]
    slices: list[list[Piece]]

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
            **sources.to_json(self.files, self.slices),
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        files, slices = sources.from_json(data)
        keys = ("tokenizer", "tokenizer_sha256", "vocab_size", "eos_id", "jsonl_field",
                "slice_bytes", "chunk_tokens", "shard_chunks")
        return cls(**{k: data[k] for k in keys}, files=files, slices=slices)

    def same_work(self, other: Plan) -> bool:
        """Same content to encode; the tokenizer may have moved, its hash may not change."""
        a, b = self.to_json(), other.to_json()
        a.pop("tokenizer")
        b.pop("tokenizer")
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
    slice_mb: float = 64.0,
    chunk_tokens: int = CHUNK_TOKENS,
    shard_chunks: int = SHARD_CHUNKS,
) -> Plan:
    if slice_mb <= 0:
        raise ModtrainError(f"--slice-size {slice_mb} must be positive (megabytes per slice)")
    if chunk_tokens < 1 or shard_chunks < 1:
        raise ModtrainError("--chunk-tokens and --shard-chunks must be at least 1")
    if not jsonl_field:
        raise ModtrainError("--jsonl-field is empty; name the field that holds the text")
    files = sources.expand_inputs(inputs, input_format)
    tokenizer = Tokenizer(tokenizer_path)
    slice_bytes = max(1, int(slice_mb * 1e6))
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
    )
