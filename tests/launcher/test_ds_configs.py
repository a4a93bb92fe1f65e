"""launch/ds_*.json: each merges into the DeepSpeed config modtrain derives."""

from __future__ import annotations

from pathlib import Path

import pytest

from modtrain.config import load_config
from modtrain.train.ds_config import deepspeed_config

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


@pytest.mark.parametrize("name, stage, pipeline", [
    ("ds_zero1", 1, 1), ("ds_zero2", 2, 1), ("ds_zero3", 3, 1), ("ds_zero1_pipeline", 1, 2)])
def test_launch_configs_merge(name, stage, pipeline):
    config = load_config(None, [f"train.zero_stage={stage}", f"parallel.pipeline={pipeline}",
                                f"train.deepspeed_config={LAUNCH / name}.json",
                                "train.global_batch_size=8", "train.micro_batch_size=4"])
    ds = deepspeed_config(config, 2)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ("pipeline" in ds) == (pipeline > 1)


def test_a_json_stage_that_differs_from_train_zero_stage_is_refused():
    from modtrain.errors import ModtrainError

    config = load_config(None, ["train.zero_stage=1",
                                f"train.deepspeed_config={LAUNCH / 'ds_zero3'}.json"])
    with pytest.raises(ModtrainError, match="set train.zero_stage=3") as err:
        deepspeed_config(config, 1)
    assert "\n" not in str(err.value)


def test_a_json_gradient_clipping_that_differs_from_train_grad_clip_is_refused(tmp_path):
    from modtrain.errors import ModtrainError

    json_path = tmp_path / "ds.json"
    json_path.write_text('{"gradient_clipping": 0.5}')
    config = load_config(None, ["train.grad_clip=1.0", f"train.deepspeed_config={json_path}"])
    with pytest.raises(ModtrainError, match="set train.grad_clip instead") as err:
        deepspeed_config(config, 1)
    assert "\n" not in str(err.value)
    # The same value is accepted; modtrain then decides who clips (DeepSpeed with ZeRO-1).
    json_path.write_text('{"gradient_clipping": 1.0}')
    assert deepspeed_config(config, 1)["gradient_clipping"] == 1.0
