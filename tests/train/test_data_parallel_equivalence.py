"""DeepSpeed ZeRO 0 (modtrain clips), 1, 2 and 3 on 2 gloo ranks reproduce the 1-process run
(same global batch)."""

from __future__ import annotations

import pytest

from tests.train.helpers import deepspeed_command, run, single_command, step_losses, tiny_config

# fp32 on CPU: the two layouts differ only in summation order (two half-batch means averaged
# by an all-reduce instead of one full-batch mean), a few ulp per step that Adam carries.
LOSS_TOLERANCE = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_two_ranks_match_one_process(tmp_path, char_store, char_tokenizer, stage):
    zero, steps = f"train.zero_stage={stage}", "train.steps=20"
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "single", micro=8),
                       zero, steps))
    run(deepspeed_command(tiny_config(tmp_path, char_store, char_tokenizer, "double", micro=4),
                          zero, steps))
    a, b = step_losses(tmp_path / "single"), step_losses(tmp_path / "double")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    diffs = [abs(a[s] - b[s]) for s in a]
    print(f"ZeRO-{stage}, 2 ranks vs 1: max |loss diff| over {len(diffs)} steps = {max(diffs):.2e}")
    assert max(diffs) < LOSS_TOLERANCE, f"per-step loss differences {diffs}"
    assert (tmp_path / "double" / "checkpoints" / "latest").is_file()
