"""Universal copies: checksums over the whole tree, a damaged copy rebuilt from its tag, a
tag too large for an in-job conversion refused with the command to run first."""

from __future__ import annotations

import pytest

from modtrain.checkpoint.engine import universal
from modtrain.checkpoint.files import read_manifest
from modtrain.checkpoint.format import MANIFEST
from modtrain.errors import ModtrainError
from tests.checkpoint.engine.test_safety import TAG, _copy, saved_run  # noqa: F401 - fixture


def test_a_universal_copy_records_checksums_of_every_file(tmp_path, saved_run):  # noqa: F811
    _, tag_dir = _copy(saved_run, tmp_path)
    copy = universal.write_universal(tag_dir.parent, TAG, pipeline=False)
    recorded = read_manifest(copy)
    assert recorded is not None and set(recorded) == set(universal.tree_files(copy))
    assert any(name.startswith("zero/") for name in recorded)
    assert universal.check_copy(copy) == []


def test_a_damaged_universal_copy_is_rebuilt_from_its_tag(tmp_path, saved_run):  # noqa: F811
    _, tag_dir = _copy(saved_run, tmp_path)
    copy = universal.write_universal(tag_dir.parent, TAG, pipeline=False)
    weight = copy / "zero" / "final_norm.weight" / "fp32.pt"
    good = weight.read_bytes()
    weight.write_bytes(good[:100])  # cut short, as a full disk or an interrupted copy leaves it
    assert [p.kind for p in universal.check_copy(copy)] == ["damaged"]
    said: list[str] = []
    again = universal.write_universal(tag_dir.parent, TAG, pipeline=False, log=said.append)
    assert again == copy and weight.read_bytes() == good
    assert said == [f"{copy} is damaged (zero/final_norm.weight/fp32.pt has 100 bytes, "
                    f"{len(good)} were saved); rebuilding it from {TAG}"]
    (copy / MANIFEST).unlink()  # a copy without checksums is not trusted either
    assert universal.check_copy(copy)[0].text == f"{copy.name} has no {MANIFEST}"


def test_a_large_tag_is_not_converted_while_the_ranks_wait(tmp_path, saved_run,  # noqa: F811
                                                           monkeypatch):
    _, tag_dir = _copy(saved_run, tmp_path)
    monkeypatch.setattr(universal, "IN_JOB_LIMIT_BYTES", 1000)
    root = tag_dir.parent
    with pytest.raises(ModtrainError, match=(
            rf"needs a universal checkpoint for this layout, too large to convert while the "
            rf"job's ranks wait; convert it first: modtrain checkpoint universal {root} --tag "
            rf"{TAG} --pipeline 2$")):
        universal.convert_in_job(root, TAG, pipeline=True, pipeline_size=2)
    assert not (root / ".universal-pipeline-" / TAG).exists()
    universal.write_universal(root, TAG, pipeline=True)  # converted ahead: the job loads it
    assert universal.convert_in_job(root, TAG, True, 2) == f".universal-pipeline-{TAG}"
