"""A context extension end to end: train at 1024 tokens, resume at 4096 with linear RoPE
scaling (factor 4), export; the export's logits equal the training model's over all 4096
positions.

Tolerance 1e-4 as in test_export.py (measured: see the printed differences, about 1e-6 in
fp32 on CPU).
"""

from __future__ import annotations

import json

import pytest
import torch

from modtrain.inference.export import convert_checkpoint, load_export
from tests.inference.conftest import token_batch, train_run, training_model

TOLERANCE = 1e-4
SHORT, LONG = 1024, 4096
SMALL = ["model.num_layers=2", "train.global_batch_size=1", "train.micro_batch_size=1",
         "train.log_interval=1", "train.eval_batches=1"]


def _at(seq: int, steps: int) -> list[str]:
    return [f"model.max_seq_length={seq}", f"data.seq_length={seq}", f"train.steps={steps}",
            f"train.save_interval={steps}", f"train.eval_interval={steps}"]


@pytest.mark.slow
def test_resume_at_a_longer_context_and_export(dist, tmp_path, char_store, char_tokenizer):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    train_run(run, char_store, char_tokenizer, *SMALL, *_at(SHORT, 2))
    train_run(run, char_store, char_tokenizer, *SMALL, *_at(LONG, 4), "run.resume=auto",
              "model.rope_scaling.type=linear", "model.rope_scaling.factor=4",
              f"model.rope_scaling.original_max_seq_length={SHORT}")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text()
             .splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]  # the resumed run continued from step 2's checkpoint
    export = convert_checkpoint(run, tmp_path / "export")
    config = json.loads((export / "config.json").read_text())
    assert config["max_position_embeddings"] == LONG
    assert config["rope_parameters"]["rope_type"] == "linear"
    gpt = training_model(run)
    ids = token_batch(1, LONG, config["vocab_size"])
    hf = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    with torch.no_grad():
        ref = gpt(ids).logits
        hf_diff = (hf(ids).logits - ref).abs().max().item()
        core_diff = (load_export(export)(ids) - ref).abs().max().item()
    print(f"S={LONG}: max |logit diff| HF {hf_diff:.1e}, modtrain {core_diff:.1e}")
    assert hf_diff < TOLERANCE and core_diff < TOLERANCE
