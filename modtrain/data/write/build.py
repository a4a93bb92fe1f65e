"""Assembling a store from parts, inside a hidden build directory, then renaming it into place.

BUILD = .NAME.zarr.build/ beside the destination:
  plan.json          what is being built (modtrain/data/write/plan.py)
  parts/NNNNNN/      encoded slices (modtrain/data/write/encode.py), kept across interrupted runs
  progress/          per-worker counters for the progress display
  store.zarr/        the store being assembled; renamed to NAME.zarr when complete
Shard s of `tokens` covers tokens [s * shard, (s + 1) * shard) and is written whole by one
process from the memory-mapped parts, so processes never share a shard file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from modtrain.data.format import (
    CHUNK_TOKENS,
    DOC_OFFSETS,
    FORMAT_NAME,
    FORMAT_VERSION,
    SHARD_CHUNKS,
    SHARD_SHA256,
    TOKENS,
    build_dir_for,
    content_digest,
    file_digest,
    ids_digest,
    is_store,
    shard_file,
    token_dtype,
)
from modtrain.data.write import encode
from modtrain.data.write.plan import Plan
from modtrain.errors import ModtrainError
from modtrain.run_dir import move_aside

# zarr skips writing all-fill chunks by default; every shard file must exist to be checksummed.
WRITE_ALL_CHUNKS = {"array.write_empty_chunks": True}


def store_dir(build: Path) -> Path:
    return build / "store.zarr"


def tokens_layout(num_tokens: int, chunk_tokens: int = CHUNK_TOKENS,
                  shard_chunks: int = SHARD_CHUNKS) -> tuple[int, int]:
    """(chunk, shard) lengths in tokens for an array of `num_tokens`."""
    chunk = max(1, min(chunk_tokens, num_tokens))
    shard = max(chunk, min(shard_chunks * chunk, -(-num_tokens // chunk) * chunk))
    return chunk, shard


def create_tokens_array(group: zarr.Group, num_tokens: int, dtype: np.dtype, chunk: int,
                        shard: int) -> zarr.Array:
    return group.create_array(
        TOKENS, shape=(num_tokens,), dtype=dtype, chunks=(chunk,), shards=(shard,),
        # crc32c per chunk: a corrupted chunk fails loudly on every read, not only on --verify
        compressors=[ZstdCodec(level=3), Crc32cCodec()], fill_value=0,
        dimension_names=["token"], overwrite=True,
    )


def write_shard(store_path: Path, shard: int, data: np.ndarray) -> bytes:
    """Write one whole shard of `tokens` (data = its tokens); returns the file's SHA-256."""
    tokens = zarr.open_array(store_path / TOKENS, mode="r+", zarr_format=3)
    size = int(tokens.shards[0])
    with zarr.config.set(WRITE_ALL_CHUNKS):
        tokens[shard * size : shard * size + len(data)] = data
    return file_digest(shard_file(store_path, tokens, shard))


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out` without --overwrite, and with it anything but a token store or
    an empty directory (--overwrite must never take a corpus or a run directory with it)."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ModtrainError(f"store {out} already exists; pass --overwrite or choose another --out")
    if not (is_store(out) or (out.is_dir() and not any(out.iterdir()))):
        raise ModtrainError(f"--out {out} exists and is not a modtrain token store; --overwrite "
                            "replaces only a token store or an empty directory: choose another "
                            "--out")




def open_build(out: Path, plan: Plan, overwrite: bool, any_slicing: bool = False) -> Path:
    """Create the build directory, or reuse one holding the same plan (resume); its
    plan.json is the plan to run. `any_slicing`: resume a build of the same inputs however
    it was sliced (the slice size was derived, e.g. from another number of workers)."""
    check_destination(out, overwrite)
    build = build_dir_for(out)
    plan_file = build / "plan.json"
    if plan_file.is_file():
        if Plan.load(plan_file).same_work(plan, any_slicing):
            return build
        finished = any(p.name.isdigit() for p in (build / "parts").glob("*"))
        if finished and not overwrite:  # a build with no finished part is not worth keeping
            raise ModtrainError(
                f"a partial build of {out} from other inputs or settings is at {build}; rerun "
                "with the same inputs and tokenizer to resume it, or pass --overwrite to discard it"
            )
    if build.exists():
        shutil.rmtree(build)
    (build / "parts").mkdir(parents=True)
    plan.save(plan_file)
    return build


@dataclass(frozen=True)
class Layout:
    """Where each part's tokens go in the store."""

    infos: list[encode.PartInfo]
    starts: np.ndarray  # token offset of each part; starts[-1] == num_tokens
    dtype: np.dtype
    chunk: int
    shard: int

    @property
    def num_tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def num_shards(self) -> int:
        return -(-self.num_tokens // self.shard)


def read_layout(build: Path, num_parts: int, dtype: np.dtype, chunk_tokens: int,
                shard_chunks: int) -> Layout:
    infos = [encode.read_info(build, i) for i in range(num_parts)]
    starts = np.concatenate([[0], np.cumsum([i.num_tokens for i in infos])]).astype(np.int64)
    if starts[-1] == 0:
        raise ModtrainError("the corpus produced no tokens; pass files that contain text")
    chunk, shard = tokens_layout(int(starts[-1]), chunk_tokens, shard_chunks)
    return Layout(infos, starts, np.dtype(dtype), chunk, shard)


def init_store(build: Path, layout: Layout) -> None:
    """Create the empty store (group + `tokens` array) that the shard writers fill."""
    group = zarr.open_group(store_dir(build), mode="w", zarr_format=3)
    create_tokens_array(group, layout.num_tokens, layout.dtype, layout.chunk, layout.shard)


def _gather(build: Path, layout: Layout, start: int, stop: int) -> np.ndarray:
    first = int(np.searchsorted(layout.starts, start, side="right")) - 1
    out, i = [], first
    while start < stop:
        info, base = layout.infos[i], int(layout.starts[i])
        end = min(stop, base + info.num_tokens)
        if end > start:
            out.append(encode.part_tokens(build, i, layout.dtype, info.num_tokens)[start - base:
                                                                                  end - base])
        start = max(start, end)
        i += 1
    return np.concatenate(out)


def write_shards(build: Path, layout: Layout, shards: list[int]) -> list[tuple[int, bytes, bytes]]:
    """Write whole shards; returns (shard, SHA-256 of its file, SHA-256 of its raw ids)."""
    done = []
    for s in shards:
        start = s * layout.shard
        data = _gather(build, layout, start, min(layout.num_tokens, start + layout.shard))
        done.append((s, write_shard(store_dir(build), s, data), ids_digest(data)))
    return done


def finalize(
    build: Path,
    layout: Layout,
    digests: list[tuple[int, bytes, bytes]],
    out: Path,
    attrs: dict,
    overwrite: bool,
) -> Path:
    """Write offsets, checksums and attributes, then move the store into place."""
    digests = sorted(digests)
    if [d[0] for d in digests] != list(range(layout.num_shards)):
        raise RuntimeError("internal error: some shards were not written")
    ends = [
        layout.starts[i] + encode.part_doc_ends(build, i).astype(np.int64)
        for i in range(len(layout.infos))
    ]
    offsets = np.concatenate([[0], *ends]).astype(np.uint64)
    if int(offsets[-1]) != layout.num_tokens:
        raise RuntimeError("internal error: the last document does not end the token stream")
    group = zarr.open_group(store_dir(build), mode="r+", zarr_format=3)
    off = group.create_array(
        DOC_OFFSETS, shape=offsets.shape, dtype=np.uint64,
        chunks=(min(CHUNK_TOKENS, len(offsets)),),
        # crc32c: a damaged chunk fails the read instead of decoding to other offsets
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
        dimension_names=["document_boundary"], overwrite=True,
    )
    off[:] = offsets
    sums = np.frombuffer(b"".join(d[1] for d in digests), dtype=np.uint8).reshape(-1, 32)
    arr = group.create_array(
        SHARD_SHA256, shape=sums.shape, dtype=np.uint8, chunks=sums.shape,
        dimension_names=["shard", "byte"], overwrite=True,
    )
    arr[:] = sums
    group.attrs.update({
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **attrs,
        "dtype": layout.dtype.name,
        "num_tokens": layout.num_tokens,
        "num_documents": len(offsets) - 1,
        "chunk_tokens": layout.chunk,
        "shard_tokens": layout.shard,
        "num_shards": layout.num_shards,
        "text_bytes": sum(i.text_bytes for i in layout.infos),
        "skipped_documents": sum(i.skipped_documents for i in layout.infos),
        "content_sha256": content_digest([d[2] for d in digests], offsets),
    })
    _move_into_place(store_dir(build), out, overwrite)
    shutil.rmtree(build)
    return out


def _move_into_place(built: Path, out: Path, overwrite: bool) -> None:
    """Rename the built store to `out`; a store already there moves to OUT.old-<time>, an
    empty directory is removed."""
    if out.exists():
        check_destination(out, overwrite)
        if is_store(out):
            old = move_aside(out)
            print(f"moved the earlier store {out} aside to {old}")
        else:
            out.rmdir()
    built.rename(out)


def write_store(
    out: str | Path,
    documents: Iterable[np.ndarray],
    *,
    vocab_size: int,
    tokenizer_sha256: str,
    eos_id: int,
    sources: list[str],
    overwrite: bool = False,
    chunk_tokens: int = CHUNK_TOKENS,
    shard_chunks: int = SHARD_CHUNKS,
) -> Path:
    """A store at `out` from token documents already in memory (each already ending in EOS;
    one process, one part)."""
    out = Path(out)
    documents = [np.asarray(d) for d in documents]
    check_destination(out, overwrite)
    build = build_dir_for(out)
    shutil.rmtree(build, ignore_errors=True)
    dtype = token_dtype(vocab_size)
    encode.write_documents_part(encode.part_dir(build, 0), documents, dtype)
    layout = read_layout(build, 1, dtype, chunk_tokens, shard_chunks)
    init_store(build, layout)
    digests = write_shards(build, layout, list(range(layout.num_shards)))
    attrs = {"tokenizer_sha256": tokenizer_sha256, "vocab_size": int(vocab_size),
             "eos_id": int(eos_id), "sources": sources}
    return finalize(build, layout, digests, out, attrs, overwrite)
