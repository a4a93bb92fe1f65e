"""Which layouts resume directly, which through a universal checkpoint, which are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modtrain.checkpoint.engine.resume import (
    context_notes,
    current_layout,
    needs_universal,
    plan_resume,
)
from modtrain.checkpoint.format import CheckpointLayout
from modtrain.errors import ModtrainError


def _saved(root: Path, layout: CheckpointLayout, model: dict | None = None) -> Path:
    """A checkpoint directory as far as resume planning reads it: `latest` + modtrain.json."""
    (root / "step_00000004").mkdir(parents=True)
    state = {"step": 4, "layout": layout.to_json(), "config": {"model": model or {}}}
    (root / "step_00000004" / "modtrain.json").write_text(json.dumps(state))
    (root / "latest").write_text("step_00000004")
    return root


def test_same_layout_resumes_directly(tmp_path):
    layout = current_layout(2, 2, 1, 1)
    plan = plan_resume(_saved(tmp_path, layout), layout)
    assert plan.tag == "step_00000004" and plan.same_layout and not plan.universal


@pytest.mark.parametrize("saved,now,universal", [
    ((1, 1, 2, 1), (1, 1, 1, 1), True),   # ZeRO shards by data-parallel rank
    ((1, 1, 2, 0), (1, 1, 1, 0), False),  # without ZeRO every rank holds everything
    ((2, 1, 1, 1), (1, 1, 1, 1), True),
    ((1, 2, 1, 1), (1, 1, 1, 1), True),
    ((1, 1, 1, 1), (1, 4, 1, 1), True),
    ((2, 2, 1, 1), (2, 2, 1, 1), False),
])
def test_which_layout_changes_need_a_universal_checkpoint(saved, now, universal):
    assert needs_universal(current_layout(*saved), current_layout(*now)) is universal


def test_layout_change_of_an_expert_checkpoint_is_refused(tmp_path):
    root = _saved(tmp_path, current_layout(1, 1, 2, 1), model={"moe": {"enabled": True}})
    with pytest.raises(ModtrainError, match="relaunch with the saved layout$") as err:
        plan_resume(root, current_layout(1, 1, 1, 1))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("saved_stage,now_stage,fix", [
    (0, 1, "resume on the saved layout"), (1, 0, "resume with train.zero_stage=1"),
])
def test_layout_change_without_zero_is_refused_with_the_fix(tmp_path, saved_stage, now_stage,
                                                            fix):
    root = _saved(tmp_path, current_layout(1, 2, 1, saved_stage))
    with pytest.raises(ModtrainError, match=fix) as err:
        plan_resume(root, current_layout(1, 1, 1, now_stage))
    assert "\n" not in str(err.value) and "parallel.pipeline=2" in str(err.value)


@pytest.mark.parametrize("saved_stage,now_stage", [(3, 1), (2, 3)])
def test_layout_change_across_zero_3_is_refused(tmp_path, saved_stage, now_stage):
    root = _saved(tmp_path, current_layout(1, 1, 2, saved_stage))
    with pytest.raises(ModtrainError, match=f"resume with train.zero_stage={saved_stage}$"):
        plan_resume(root, current_layout(1, 1, 1, now_stage))


def test_zero_stage_change_alone_is_refused(tmp_path):
    root = _saved(tmp_path, current_layout(1, 1, 1, 1))
    with pytest.raises(ModtrainError, match="resume with train.zero_stage=1"):
        plan_resume(root, current_layout(1, 1, 1, 2))


def test_latest_naming_an_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "latest").write_text("step_00000009")
    with pytest.raises(ModtrainError, match="not a complete modtrain checkpoint"):
        plan_resume(tmp_path, current_layout(1, 1, 1, 1))


@pytest.mark.parametrize("latest", [b"", b"\x00\xffgarbage\n", b"step_00000099"])
def test_an_empty_or_garbage_latest_resumes_from_the_newest_complete_tag(tmp_path, latest):
    root = _saved(tmp_path, current_layout(1, 1, 1, 1))
    (root / "step_00000002").mkdir()
    (root / "step_00000002" / "modtrain.json").write_text("{}")
    (root / "latest").write_bytes(latest)
    messages: list[str] = []
    plan = plan_resume(root, current_layout(1, 1, 1, 1), log=messages.append)
    assert plan.tag == "step_00000004"
    assert any("which is not a complete modtrain checkpoint" in m for m in messages)


def test_a_garbage_latest_with_fallback_off_is_one_line(tmp_path):
    root = _saved(tmp_path, current_layout(1, 1, 1, 1))
    (root / "latest").write_text("garbage")
    with pytest.raises(ModtrainError, match="names 'garbage'.*run.resume_fallback=true"):
        plan_resume(root, current_layout(1, 1, 1, 1), fallback=False)


def test_a_longer_context_without_rope_scaling_warns_and_with_it_does_not():
    from modtrain.config.schema import ModelConfig, RopeScalingConfig

    saved = {"max_seq_length": 1024, "rope_base": 10000.0}
    longer = ModelConfig(max_seq_length=4096)
    (note,) = context_notes(saved, longer)
    assert "grew from 1024" in note and "model.rope_scaling" in note and "factor 4" in note
    scaled = ModelConfig(max_seq_length=4096,
                         rope_scaling=RopeScalingConfig("linear", 4.0, 1024))
    assert context_notes(saved, scaled) == []
    assert context_notes(saved, ModelConfig(max_seq_length=4096, rope_base=5e5)) == []
    assert context_notes(saved, ModelConfig(max_seq_length=1024)) == []
