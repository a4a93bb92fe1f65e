"""Parquet and Arrow IPC inputs (and save_to_disk directories), slicing by row group, --filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from modtrain.data.write.filters import parse_filter
from modtrain.data.write.plan import make_plan
from modtrain.data.write.prepare import prepare_store
from modtrain.errors import ModtrainError
from tests.data.write.test_prepare_mpi import MPIRUN, RANK_SCRIPT, mpi_env


@pytest.fixture(scope="module")
def records(documents) -> list[dict]:
    """Unicode, empty and very long documents among the corpus's paragraphs, with metadata."""
    long = "".join(documents) * 3
    docs = [*documents[:60], "", "naïve café — 日本語の文 🚀\n", "   ", long, *documents[60:120]]
    return [{"text": d, "lang": "en" if i % 3 else "fr", "score": i / 10, "id": i}
            for i, d in enumerate(docs)]


def _table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records)


def _jsonl(tmp_path, records: list[dict]):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _tokens(store) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(store, mode="r", zarr_format=3)
    return g["tokens"][:], g["doc_offsets"][:]


def _same_tokens(a, b) -> None:
    (ta, oa), (tb, ob) = _tokens(a), _tokens(b)
    assert np.array_equal(ta, tb) and np.array_equal(oa, ob)


def test_parquet_arrow_and_saved_dataset_give_the_json_lines_tokens(tmp_path, char_tokenizer,
                                                                    records):
    import datasets

    expected = prepare_store(char_tokenizer, [_jsonl(tmp_path, records)], tmp_path / "j.zarr")
    pq.write_table(_table(records), tmp_path / "docs.parquet", row_group_size=17)
    with (pa.OSFile(str(tmp_path / "docs.arrow"), "wb") as sink,  # the IPC file format
          pa.ipc.new_file(sink, _table(records).schema) as w):
        for batch in _table(records).to_batches(max_chunksize=25):
            w.write_batch(batch)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(saved), max_shard_size="100KB")
    assert len(list(saved.glob("data-*.arrow"))) > 1  # several shards, read in state.json order
    for name, source in [("p", tmp_path / "docs.parquet"), ("a", tmp_path / "docs.arrow"),
                         ("s", saved)]:
        out = prepare_store(char_tokenizer, [source], tmp_path / f"{name}.zarr")
        _same_tokens(out, expected)
    g = zarr.open_group(expected, mode="r", zarr_format=3)
    assert g.attrs["num_documents"] == len(records) - 2  # "" and "   " are skipped


def test_a_parquet_file_is_split_by_row_group_over_workers(tmp_path, char_tokenizer, records):
    path = tmp_path / "docs.parquet"
    pq.write_table(_table(records * 3), path, row_group_size=40)
    plan = make_plan(char_tokenizer, [path], slice_mb=0.05)
    assert len(plan.slices) > 2 and plan.slices[-1][-1].stop == path.stat().st_size
    one = prepare_store(char_tokenizer, [path], tmp_path / "1.zarr")
    two = prepare_store(char_tokenizer, [path], tmp_path / "2.zarr", workers=2, slice_mb=0.05)
    _same_tokens(one, two)
    _same_tokens(one, prepare_store(char_tokenizer, [_jsonl(tmp_path, records * 3)],
                                    tmp_path / "j.zarr"))


@pytest.mark.slow
def test_two_mpi_ranks_split_a_parquet_file(tmp_path, char_tokenizer, records):
    path = tmp_path / "docs.parquet"
    pq.write_table(_table(records * 3), path, row_group_size=40)
    out = tmp_path / "mpi.zarr"
    proc = subprocess.run(
        [str(MPIRUN), "-n", "2", sys.executable, "-c", RANK_SCRIPT, "data", "prepare",
         "--tokenizer", str(char_tokenizer), "--input", str(path), "--out", str(out),
         "--slice-size", "0.05", "--quiet"],
        env=mpi_env(), capture_output=True, text=True, timeout=180, cwd=os.getcwd(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MPI rank 1 of 2" in proc.stdout
    _same_tokens(out, prepare_store(char_tokenizer, [path], tmp_path / "one.zarr"))


def test_filter_keeps_the_matching_records(tmp_path, char_tokenizer, records):
    pq.write_table(_table(records), tmp_path / "docs.parquet", row_group_size=17)
    for expr, keep in [("lang==en", lambda r: r["lang"] == "en"),
                       ("score>=3.5", lambda r: r["score"] >= 3.5),
                       ("id != '7'", lambda r: str(r["id"]) != "7")]:
        kept = [r for r in records if keep(r)]
        expected = prepare_store(char_tokenizer, [_jsonl(tmp_path, kept)], tmp_path / "k.zarr",
                                 overwrite=True)
        (tmp_path / "all").mkdir(exist_ok=True)
        for source in (tmp_path / "docs.parquet", _jsonl(tmp_path / "all", records)):
            out = prepare_store(char_tokenizer, [source], tmp_path / "f.zarr", filter=expr,
                                overwrite=True)
            _same_tokens(out, expected)
            assert zarr.open_group(out, mode="r", zarr_format=3).attrs["filter"] == expr


@pytest.mark.parametrize("text", ["lang", "lang=en", "score>high", "__import__('os')==1", ""])
def test_filters_that_do_not_parse_are_refused(text):
    if not text:
        assert parse_filter(text) is None
        return
    with pytest.raises(ModtrainError, match="--filter"):
        parse_filter(text)


def test_bad_columnar_files_are_one_line_errors(tmp_path, char_tokenizer, records):
    good = tmp_path / "good.parquet"
    pq.write_table(_table(records), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), ints)
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"not arrow at all" * 10)
    cases = [
        ([cut], {}, "cut.parquet is not a readable Parquet file"),
        ([good], {"jsonl_field": "body"}, "has no column 'body'.*--text-field"),
        ([ints], {}, "holds int64 in column 'text', not strings"),
        ([junk], {}, "junk.arrow is not a readable Arrow IPC file"),
        ([good], {"filter": "quality>1"}, "no column 'quality' for --filter"),
    ]
    for inputs, kwargs, message in cases:
        with pytest.raises(ModtrainError, match=message) as e:
            prepare_store(char_tokenizer, inputs, tmp_path / "x.zarr", **kwargs)
        assert "\n" not in str(e.value)
    text = tmp_path / "t.txt"
    text.write_text("one document\n")
    with pytest.raises(ModtrainError, match="text file"):
        prepare_store(char_tokenizer, [text], tmp_path / "x.zarr", filter="lang==en")
