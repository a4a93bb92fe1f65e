from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import modtrain.data.write.prepare as prep
from modtrain.data.format import build_dir_for
from modtrain.data.read.store import TokenStore
from modtrain.data.tokenizer import Tokenizer
from modtrain.data.write.prepare import prepare_store
from modtrain.errors import ModtrainError
from tests.conftest import cli_env


def _contents(path) -> tuple[np.ndarray, np.ndarray, str]:
    g = zarr.open_group(path, mode="r", zarr_format=3)
    return g["tokens"][:], g["doc_offsets"][:], g.attrs["content_sha256"]


def _same_store(a, b) -> None:
    ta, oa, ha = _contents(a)
    tb, ob, hb = _contents(b)
    assert np.array_equal(ta, tb) and np.array_equal(oa, ob) and ha == hb


def test_every_format_round_trips(tmp_path, char_tokenizer, mixed_corpus, mixed_documents):
    out = prepare_store(char_tokenizer, [mixed_corpus], tmp_path / "m.zarr", jsonl_field="body")
    store, tok = TokenStore(out), Tokenizer(char_tokenizer)
    o = store.doc_offsets
    assert len(o) - 1 == len(mixed_documents)
    for i in (0, 1, len(mixed_documents) // 2, len(mixed_documents) - 2, len(mixed_documents) - 1):
        ids = store.read(int(o[i]), int(o[i + 1]))
        assert ids[-1] == tok.eos_id
        assert tok.decode(ids[:-1].tolist()) == mixed_documents[i]
    text = "".join(mixed_documents)
    assert store.num_tokens == len(text) + len(mixed_documents)  # char model: 1 id a char
    assert store.attrs["jsonl_field"] == "body" and len(store.attrs["sources"]) == 4
    assert store.tokens.dtype == np.uint8


def test_same_store_from_one_or_two_processes_and_any_slicing(tmp_path, char_tokenizer,
                                                             mixed_corpus):
    one = prepare_store(char_tokenizer, [mixed_corpus], tmp_path / "1.zarr", jsonl_field="body")
    two = prepare_store(char_tokenizer, [mixed_corpus], tmp_path / "2.zarr", jsonl_field="body",
                        workers=2, slice_mb=0.01)
    again = prepare_store(char_tokenizer, [mixed_corpus], tmp_path / "3.zarr", jsonl_field="body",
                          slice_mb=0.003)
    _same_store(one, two)
    _same_store(one, again)
    assert not build_dir_for(two).exists()


def test_interrupted_prepare_leaves_no_store_and_resumes(tmp_path, char_tokenizer, corpus,
                                                         monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    lines = corpus.read_text().splitlines()
    with open(inputs / "docs.jsonl", "w") as f:
        for k in range(8):
            for line in lines:
                f.write(json.dumps({"text": f"{k} {line}"}) + "\n")
    out = tmp_path / "r.zarr"
    args = ["--tokenizer", str(char_tokenizer), "--input", str(inputs), "--out", str(out),
            "--slice-size", "0.01", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "modtrain", "data", "prepare", *args],
                            env=cli_env())
    parts = build_dir_for(out) / "parts"
    deadline = time.monotonic() + 60
    def finished():  # complete parts only, not ones still under their temporary name
        return [p for p in parts.glob("*/part.json") if p.parent.name.isdigit()]

    while not finished() and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)  # as a node failure or a scancel would
    proc.wait()
    kept = finished()
    num_slices = len(json.loads((build_dir_for(out) / "plan.json").read_text())["slices"])
    assert 1 <= len(kept) < num_slices, "the kill must land between the first and last slice"
    assert not out.exists()
    with pytest.raises(ModtrainError, match="incomplete; a partial build is at"):
        TokenStore(out)

    done_before = {int(p.parent.name) for p in kept}
    encoded = []  # a spy on the real encoder: which slices the rerun encodes
    real = prep.encode_slice
    monkeypatch.setattr(prep, "encode_slice",
                        lambda build, plan, i, report: encoded.append(i) or real(build, plan, i,
                                                                                 report))
    prepare_store(char_tokenizer, [inputs], out, slice_mb=0.01)
    assert sorted(encoded) == sorted(set(range(num_slices)) - done_before)
    assert not build_dir_for(out).exists()
    monkeypatch.undo()
    reference = prepare_store(char_tokenizer, [inputs], tmp_path / "ref.zarr", slice_mb=0.01)
    _same_store(out, reference)


def test_partial_build_of_other_inputs_is_refused(tmp_path, char_tokenizer, mixed_corpus, corpus):
    bad = tmp_path / "z_bad.jsonl"  # sorted last: the slices before it finish
    bad.write_text("{broken\n")
    out = tmp_path / "p.zarr"
    with pytest.raises(ModtrainError, match="not valid JSON"):
        prepare_store(char_tokenizer, [mixed_corpus, bad], out, jsonl_field="body",
                      slice_mb=0.01)
    assert any(build_dir_for(out).glob("parts/*/part.json")) and not out.exists()
    with pytest.raises(ModtrainError, match="from other inputs or settings"):
        prepare_store(char_tokenizer, [corpus], out)
    prepare_store(char_tokenizer, [corpus], out, overwrite=True)
    assert TokenStore(out).num_documents == 1


@pytest.mark.parametrize("line,message", [
    ("{not json", "the line at byte 27 of .*bad.jsonl is not valid JSON"),
    ('{"content": "x"}', "has no 'text' field; pass --jsonl-field"),
    ('{"text": 3}', "at byte 27 of .* holds int in field 'text', not a string"),
])
def test_bad_json_lines(tmp_path, char_tokenizer, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "First Citizen:"}\n' + line + "\n")
    with pytest.raises(ModtrainError, match=message):
        prepare_store(char_tokenizer, [path], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_undecodable_and_empty_inputs(tmp_path, char_tokenizer):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Citoyen: très bien\n".encode("latin-1"))
    with pytest.raises(ModtrainError, match="latin1.txt is not UTF-8 text.*convert it to UTF-8"):
        prepare_store(char_tokenizer, [latin], tmp_path / "x.zarr")
    empty = tmp_path / "empty.txt.gz"
    with gzip.open(empty, "wt") as f:
        f.write("\n \n")
    with pytest.raises(ModtrainError, match="empty.txt.gz is empty"):
        prepare_store(char_tokenizer, [empty], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_overwrite_refuses_what_is_not_a_store_and_moves_a_store_aside(
        tmp_path, char_tokenizer, corpus):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ModtrainError, match="is not a modtrain token store"):
        prepare_store(char_tokenizer, [corpus], run, overwrite=True)
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints").is_dir()
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert TokenStore(prepare_store(char_tokenizer, [corpus], empty, overwrite=True))
    first = TokenStore(empty).attrs["content_sha256"]
    other = tmp_path / "other.txt"
    other.write_text("Second Citizen:\n")
    prepare_store(char_tokenizer, [other], empty, overwrite=True)
    (old,) = tmp_path.glob("empty.zarr.old-*")
    assert TokenStore(old).attrs["content_sha256"] == first
    assert TokenStore(empty).attrs["content_sha256"] != first
