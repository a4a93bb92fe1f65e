from __future__ import annotations

import json
from pathlib import Path

import pytest

from modtrain.data.write.sources import Piece, expand_inputs, line_blocks, plan_slices
from modtrain.errors import ModtrainError


def test_directories_globs_formats_and_compression(mixed_corpus):
    files = expand_inputs([mixed_corpus])
    assert [f.path.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl.gz", "c.txt.zst",
                                                         "d.txt"]
    assert [(f.kind, f.compression) for f in files] == [
        ("jsonl", "none"), ("jsonl", "gzip"), ("text", "zstd"), ("text", "none")]
    globbed = expand_inputs([str(mixed_corpus / "*.txt*"), str(mixed_corpus / "d.txt")])
    assert [f.path for f in globbed] == [files[2].path, files[3].path]  # d.txt once
    assert expand_inputs([files[0].path], "text")[0].kind == "text"


def test_large_files_split_at_line_starts(mixed_corpus):
    files = expand_inputs([mixed_corpus])
    slices = plan_slices(files, 8_000)
    pieces = [p for s in slices for p in s]
    for i, f in enumerate(files):
        mine = [p for p in pieces if p.file == i]
        assert mine[0].start == 0 and mine[-1].stop == f.size
        assert all(a.stop == b.start for a, b in zip(mine, mine[1:]))
        if f.compression != "none":
            assert len(mine) == 1  # a compressed stream cannot be entered in the middle
    a = files[0]
    assert sum(p.file == 0 for p in pieces) > 2
    data = Path(a.path).read_bytes()
    for p in pieces:
        if p.file == 0:
            assert p.start == 0 or data[p.start - 1 : p.start] == b"\n"
            block = b"".join(line_blocks(a, p))
            assert block == data[p.start : p.stop]
            assert all(json.loads(line) for line in block.splitlines())
    assert plan_slices(files, 8_000) == slices  # a pure function of the files


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ModtrainError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jsonl")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModtrainError, match="holds no files"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(ModtrainError, match="does not exist"):
        expand_inputs([tmp_path / "missing.txt"])
    with pytest.raises(ModtrainError, match="no input files"):
        expand_inputs([])
    with pytest.raises(ModtrainError, match="format 'csv' is unknown"):
        expand_inputs([tmp_path], "csv")


def test_piece_reading_matches_the_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"line one\n" * 50_000 + b"no newline at the end")
    (f,) = expand_inputs([path])
    whole = b"".join(line_blocks(f, Piece(0, 0, f.size)))
    assert whole == path.read_bytes()
