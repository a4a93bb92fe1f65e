"""The order checkpoints are chosen in: `latest`, then older complete tags, newest first."""

from __future__ import annotations

import pytest

from modtrain.checkpoint.read.reader import resolve_checkpoint
from modtrain.checkpoint.tags import candidate_tags


def _tags(root, *steps: int, incomplete: tuple[int, ...] = ()) -> None:
    for step in steps + incomplete:
        (root / f"step_{step:08d}").mkdir(parents=True)
        (root / f"step_{step:08d}" / "mp_rank_00_model_states.pt").write_bytes(b"")
    for step in steps:
        (root / f"step_{step:08d}" / "modtrain.json").write_text("{}")


def test_latest_first_then_older_tags_newest_first(tmp_path):
    _tags(tmp_path, 2, 4, 6, incomplete=(8,))
    (tmp_path / "latest").write_text("step_00000004")
    assert candidate_tags(tmp_path) == ["step_00000004", "step_00000002"]


@pytest.mark.parametrize("latest", [b"", b"\x00\xff\xfe", b"step_00000008", b"../../etc"])
def test_an_empty_garbage_or_dangling_latest_hides_no_checkpoint(tmp_path, latest):
    _tags(tmp_path / "checkpoints", 2, 6, incomplete=(8,))
    (tmp_path / "checkpoints" / "latest").write_bytes(latest)
    assert candidate_tags(tmp_path / "checkpoints") == ["step_00000006", "step_00000002"]
    # convert and inspect read the same choice
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000006"
