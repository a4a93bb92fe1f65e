"""Four-rank layouts (tensor x data, tensor x pipeline) against one process."""

from __future__ import annotations

import pytest

from tests.train.helpers import deepspeed_command, run, single_command, step_losses, tiny_config

CURVE_TOLERANCE = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("layout,micro", [
    (["parallel.tensor=2"], 4),  # tensor 2 x data 2
    (["parallel.tensor=2", "parallel.pipeline=2"], 4),  # tensor 2 x pipeline 2
], ids=["tp2xdp2", "tp2xpp2"])
def test_four_ranks_match_one_process(tmp_path, char_store, char_tokenizer, layout, micro):
    common = ["train.steps=20", "model.vocab_multiple=2", "model.num_heads=2"]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "one"), *common))
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "four", micro=micro)
    run(deepspeed_command(cfg, *common, *layout, nproc=4))
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "four")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    worst = max(abs(a[s] - b[s]) for s in a)
    print(f"{'x'.join(layout)} (4 ranks) vs 1 process, 20 steps: max |loss diff| {worst:.2e}")
    assert worst < CURVE_TOLERANCE
