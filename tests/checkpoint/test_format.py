"""modtrain.json as a typed state: what every modtrain wrote reads, anything else is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modtrain.checkpoint.format import CheckpointLayout, CheckpointState
from modtrain.checkpoint.tags import read_state
from modtrain.errors import ModtrainError

OLD_TAG = Path(__file__).parent / "data" / "zero1_mod_2steps" / "checkpoints" / "step_00000002"


def test_the_state_an_old_checkpoint_wrote_reads_and_writes_back_the_same():
    written = json.loads((OLD_TAG / "modtrain.json").read_text())
    state = read_state(OLD_TAG.parent, OLD_TAG.name)
    assert state.step == 2 and state.layout == CheckpointLayout(1, 1, 1, 1)
    assert state.data["consumed_samples"] == 4 and state.model["hidden_size"] == 16
    assert state.format_version == 1
    assert {k: v for k, v in state.to_json().items() if k != "format_version"} == written


def test_a_state_round_trips_through_json():
    state = CheckpointState(step=7, config={"model": {}}, data={"consumed_samples": 3},
                            layout=CheckpointLayout(2, 1, 4, 1))
    assert CheckpointState.from_json(json.loads(json.dumps(state.to_json())), "x") == state


@pytest.mark.parametrize("client", [
    {"modtrain": {"step": 3, "data": {}, "config": {"model": {}}}},  # under "modtrain"
    {"module": {}, "optimizer": None, "step": 3, "data": {}, "config": {"model": {}}},  # oldest
])
def test_the_state_older_checkpoints_kept_in_deepspeeds_client_state_reads(client):
    state = CheckpointState.from_client_state(client, "tag")
    assert state.step == 3 and state.config == {"model": {}} and state.layout is None


@pytest.mark.parametrize("change,named", [
    (lambda s: s.pop("step"), "no step"),
    (lambda s: s.update(steps=2), "unknown fields steps"),
    (lambda s: s["layout"].pop("zero_stage"), "layout has no zero_stage"),
    (lambda s: s.update(step="2"), "step is '2', not an integer"),
    (lambda s: s.update(config=[]), "config is not an object"),
    (lambda s: s.update(format_version=99), "format_version 99"),
])
def test_a_missing_unknown_or_wrong_field_is_one_line(tmp_path, change, named):
    state = json.loads((OLD_TAG / "modtrain.json").read_text())
    change(state)
    (tmp_path / "step_00000002").mkdir()
    (tmp_path / "step_00000002" / "modtrain.json").write_text(json.dumps(state))
    with pytest.raises(ModtrainError, match=named) as err:
        read_state(tmp_path, "step_00000002")
    assert "\n" not in str(err.value) and "modtrain.json" in str(err.value)


def test_a_state_without_a_layout_reads_and_refuses_what_needs_one():
    state = CheckpointState.from_json({"step": 4, "config": {}}, "modtrain.json")
    assert state.layout is None
    with pytest.raises(ModtrainError, match="modtrain.json is not a .* state \\(no layout\\)"):
        state.saved_layout("modtrain.json")


def test_a_state_file_that_is_not_json_is_one_line(tmp_path):
    (tmp_path / "step_00000002").mkdir()
    (tmp_path / "step_00000002" / "modtrain.json").write_text('{"step": 2,')
    with pytest.raises(ModtrainError, match="is not JSON") as err:
        read_state(tmp_path, "step_00000002")
    assert "\n" not in str(err.value)
