"""Parquet and Arrow IPC inputs (also `datasets.save_to_disk` directories), and --filter.

Both are formats of records: one document per row, in the string column --text-field.
Parquet files are read one row group at a time and cut into pieces at row-group
boundaries, so workers and MPI ranks share a large file; Arrow IPC files are memory-mapped
and read batch by batch, each file one piece. Nothing here imports `datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from modtrain.data.write.filters import Filter
from modtrain.data.write.registry import InputFile, InputReader, Piece, register
from modtrain.errors import ModtrainError

BATCH_ROWS = 4096  # rows per record batch read from a row group


def _text_column(f: InputFile, schema, field: str, where: Filter | None) -> None:
    """One-line errors for a missing or non-string text column, or a missing filter column."""
    import pyarrow as pa

    names = schema.names
    if field not in names:
        raise ModtrainError(f"{f.path} has no column {field!r} (it has {', '.join(names)}); "
                            "pass --text-field NAME with the column that holds the text")
    t = schema.field(field).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_string_view(t)):
        raise ModtrainError(f"{f.path} holds {t} in column {field!r}, not strings; pass "
                            "--text-field NAME with the column that holds the text")
    if where is not None and where.column not in names:
        raise ModtrainError(f"{f.path} has no column {where.column!r} for --filter (it has "
                            f"{', '.join(names)}); filter on one of those")


def _batch_texts(batch, field: str, where: Filter | None) -> list[str]:
    texts = batch.column(field).to_pylist()
    if where is not None:
        keep = where.keep(batch.column(where.column).to_pylist())
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
    return [t or "" for t in texts]  # a null text is an empty (skipped) document


@register
class ParquetReader(InputReader):
    name = "parquet"
    title = "Parquet"
    documents = "one document per row"
    suffixes = (".parquet", ".pq")
    uses_field = True

    @staticmethod
    def _open(f: InputFile):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(f.path, memory_map=True)
        except (pa.ArrowException, OSError) as e:
            raise ModtrainError(f"{f.path} is not a readable Parquet file ({e}); re-export "
                                "it or remove it") from None

    @staticmethod
    def _bounds(f: InputFile, meta) -> list[int]:
        """Row group k is bytes [b[k], b[k+1]) of the file, b[-1] the file's size: the
        compressed sizes added up, so that slices are sized by what is read."""
        bounds, at = [], 0
        for k in range(meta.num_row_groups):
            bounds.append(min(at, f.size))
            rg = meta.row_group(k)
            at += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        return [*bounds, f.size]

    def pieces(self, index: int, f: InputFile, slice_bytes: int) -> list[Piece]:
        bounds = self._bounds(f, self._open(f).metadata)
        pieces, start = [], 0
        for b in bounds[1:-1]:
            if b - start >= slice_bytes:
                pieces.append(Piece(index, start, b))
                start = b
        return [*pieces, Piece(index, start, f.size)]

    def texts(self, f: InputFile, piece: Piece, field: str,
              where: Filter | None = None) -> Iterator[tuple[int, list[str]]]:
        import pyarrow as pa

        pf = self._open(f)
        _text_column(f, pf.schema_arrow, field, where)
        bounds = self._bounds(f, pf.metadata)
        columns = list(dict.fromkeys([field] + ([where.column] if where else [])))
        for k in range(pf.metadata.num_row_groups):
            if not piece.start <= bounds[k] < piece.stop:
                continue
            first = True
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[k],
                                             columns=columns):
                    yield (bounds[k + 1] - bounds[k]) if first else 0, _batch_texts(
                        batch, field, where)
                    first = False
            except (pa.ArrowException, OSError) as e:
                raise ModtrainError(f"{f.path} has a damaged row group {k} ({e}); "
                                    "re-export the file") from None
            if first:  # an empty row group still accounts for its bytes
                yield bounds[k + 1] - bounds[k], []


@register
class ArrowReader(InputReader):
    name = "arrow"
    title = "Arrow IPC"
    documents = "one document per row"
    suffixes = (".arrow", ".feather")
    uses_field = True

    def pieces(self, index: int, f: InputFile, slice_bytes: int) -> list[Piece]:
        with self._batches(f) as (schema, _):
            del schema  # opened once here so that a damaged file fails before any work
        return [Piece(index, 0, f.size)]

    @staticmethod
    def _batches(f: InputFile):
        """(schema, record batches) of an IPC file or stream (datasets writes streams)."""
        import contextlib

        import pyarrow as pa

        @contextlib.contextmanager
        def opened():
            source = pa.memory_map(f.path, "r")
            try:
                try:
                    if source.read(6) == b"ARROW1":
                        source.seek(0)
                        reader = pa.ipc.open_file(source)
                        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                    else:
                        source.seek(0)
                        reader = pa.ipc.open_stream(source)
                        batches = iter(reader)
                except (pa.ArrowException, OSError) as e:
                    raise ModtrainError(f"{f.path} is not a readable Arrow IPC file ({e}); "
                                        "re-export it or remove it") from None
                yield reader.schema, batches
            finally:
                source.close()

        return opened()

    def texts(self, f: InputFile, piece: Piece, field: str,
              where: Filter | None = None) -> Iterator[tuple[int, list[str]]]:
        import pyarrow as pa

        with self._batches(f) as (schema, batches):
            _text_column(f, schema, field, where)
            size = f.size
            try:
                for batch in batches:
                    yield size, _batch_texts(batch, field, where)
                    size = 0
            except (pa.ArrowException, OSError) as e:
                raise ModtrainError(f"{f.path} is damaged ({e}); re-export the file") from None
            if size:
                yield size, []


def saved_dataset_files(directory: Path) -> list[Path] | None:
    """The Arrow shards of a `datasets.save_to_disk` directory in their order, or None if
    `directory` is not one: state.json lists them (a DatasetDict: dataset_dict.json lists
    its splits, each such a directory)."""
    state, splits = directory / "state.json", directory / "dataset_dict.json"
    try:
        if state.is_file() and (directory / "dataset_info.json").is_file():
            names = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
            return [directory / n for n in names]
        if splits.is_file():
            out: list[Path] = []
            for split in json.loads(splits.read_text())["splits"]:
                out += saved_dataset_files(directory / split) or []
            return out
    except (ValueError, KeyError, TypeError) as e:
        raise ModtrainError(f"{directory} looks like a saved dataset but its state.json or "
                            f"dataset_dict.json is damaged ({e}); save it again") from None
    return None
