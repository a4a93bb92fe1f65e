"""Exports of expert models (MoE, staged and integrated MoDE): they load in transformers
with the shipped code and give the training model's logits; `modtrain generate` samples."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from modtrain.inference.export import convert_checkpoint, load_export
from tests.conftest import cli_env
from tests.inference.conftest import SEQ, token_batch, train_run, training_model

TOLERANCE = 1e-4  # fp32 logits; the export sums experts in another order than DeepSpeed
# Evaluation capacity that holds every token, so the training model drops none either.
EXPERTS = ["model.moe.enabled=true", "model.moe.num_experts=4", "model.moe.eval_capacity_factor=8"]
VARIANTS = {
    "moe": ["model.mod.enabled=false", "model.moe.top_k=2"],
    "mode_staged": ["model.mod.enabled=true", "model.moe.layers=every_other"],
    "mode_integrated": ["model.mod.enabled=false", "model.moe.noop_experts=4"],
}


def _hf(export):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def expert_run(request, tmp_path_factory, char_store, char_tokenizer):
    run = tmp_path_factory.mktemp("runs") / request.param
    train_run(run, char_store, char_tokenizer, *EXPERTS, *VARIANTS[request.param])
    export = convert_checkpoint(run, tmp_path_factory.mktemp("exports") / request.param)
    return request.param, run, export


def test_expert_export_matches_training_model(dist, expert_run):
    variant, run, export = expert_run
    hf = _hf(export)
    assert type(hf).__name__ == "ModtrainForCausalLM"
    assert hf.config.moe_num_experts == 4
    ids = token_batch(3, SEQ, hf.config.vocab_size)
    gpt = training_model(run)
    with torch.no_grad():
        ref = gpt(ids).logits
        theirs = hf(ids).logits
        ours = load_export(export)(ids)
    diff_hf = (theirs - ref).abs().max().item()
    diff_ours = (ours - ref).abs().max().item()
    print(f"{variant}: max |logit diff| HF {diff_hf:.2e}, modtrain {diff_ours:.2e}")
    assert diff_hf < TOLERANCE and diff_ours < TOLERANCE


def test_generate_samples_from_an_expert_export(expert_run):
    _, _, export = expert_run
    proc = subprocess.run(
        [sys.executable, "-m", "modtrain", "generate", str(export), "--prompt", "ROMEO:",
         "--max-new-tokens", "20", "--seed", "3"],
        env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) > len("ROMEO:")
