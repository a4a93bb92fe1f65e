"""The default slice size follows the corpus and the worker count, so every worker has
work on a small corpus; a build resumes under another worker count."""

from __future__ import annotations

import pytest

from modtrain.data.write import build as builder
from modtrain.data.write.plan import MAX_SLICE_BYTES, auto_slice_bytes, make_plan
from modtrain.data.write.prepare import balance
from modtrain.errors import ModtrainError
from modtrain.resources import TINYSHAKESPEARE


@pytest.fixture(scope="module")
def corpus_4mb(tmp_path_factory):
    path = tmp_path_factory.mktemp("c4") / "c.txt"
    path.write_text(TINYSHAKESPEARE.read_text() * 4)  # 4.5 MB
    return path


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_a_4mb_corpus_gives_every_worker_slices(char_tokenizer, corpus_4mb, workers):
    plan = make_plan(char_tokenizer, [corpus_4mb], workers=workers)
    sizes = {i: plan.slice_size(i) for i in range(len(plan.slices))}
    loads = [sum(sizes[i] for i in group) for group in balance(sizes, workers)]
    assert min(loads) > 0 and max(loads) < 2 * min(loads), loads


def test_auto_slice_size_bounds():
    assert auto_slice_bytes(100_000, 8) == 1_000_000  # tiny corpora: one slice of 1 MB
    assert auto_slice_bytes(10**12, 2) == MAX_SLICE_BYTES
    assert auto_slice_bytes(80_000_000, 2) == 10_000_000


def test_an_explicit_slice_size_is_kept(char_tokenizer, corpus_4mb):
    plan = make_plan(char_tokenizer, [corpus_4mb], slice_mb=64.0, workers=4)
    assert len(plan.slices) == 1


def test_a_build_resumes_under_another_worker_count(tmp_path, char_tokenizer, corpus_4mb):
    out = tmp_path / "s.zarr"
    one = make_plan(char_tokenizer, [corpus_4mb], workers=1)
    four = make_plan(char_tokenizer, [corpus_4mb], workers=4)
    assert len(one.slices) != len(four.slices)
    build = builder.open_build(out, one, overwrite=False)
    (build / "parts" / "0").mkdir()  # a finished part
    assert builder.open_build(out, four, overwrite=False, any_slicing=True) == build
    assert (build / "parts" / "0").is_dir()
    with pytest.raises(ModtrainError, match="from other inputs or settings"):
        builder.open_build(out, four, overwrite=False)  # an explicit --slice-size differs
