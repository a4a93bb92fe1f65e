"""RoPE scaling reaches the export: transformers and modtrain's inference model compute the
training model's angles, and sampling past the training context needs the scaling.

The exports are written straight from freshly initialised training models (no training
run): what is checked is the positions' maths, which weights do not change. Tolerance as in
test_export.py (1e-4; measured about 1e-6 in fp32 on CPU).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from modtrain.config.schema import ModelConfig, RopeScalingConfig
from modtrain.errors import ModtrainError
from modtrain.inference.export import load_export, write_export
from modtrain.inference.generate import context_window
from modtrain.model import GPT
from tests.inference.conftest import token_batch

TOLERANCE = 1e-4
SEQ, ORIGINAL = 256, 64


def _model(scaling: str, mod: bool) -> ModelConfig:
    # Wide init: logits of order 1, so a change of angles shows far above the tolerance.
    m = ModelConfig(vocab_size=67, num_layers=2, hidden_size=32, num_heads=2,
                    max_seq_length=SEQ, rope_base=500.0, init_std=0.3)
    m.rope_scaling = RopeScalingConfig(scaling, 4.0 if scaling != "none" else 1.0,
                                       ORIGINAL if scaling != "none" else 0)
    m.mod.enabled, m.mod.capacity = mod, 0.25
    return m


def _export(tmp_path, m: ModelConfig, tokenizer):
    gpt = GPT(m, seed=3).eval()
    out = write_export(gpt.state_dict(), dataclasses.asdict(m), tmp_path / "export", tokenizer)
    return gpt, out


@pytest.mark.parametrize("mod", [False, True], ids=["dense", "mod"])
@pytest.mark.parametrize("scaling", ["linear", "ntk"])
def test_export_logits_equal_training_at_scaled_positions(dist, tmp_path, char_tokenizer,
                                                          scaling, mod):
    from transformers import AutoModelForCausalLM

    m = _model(scaling, mod)
    gpt, export = _export(tmp_path, m, char_tokenizer)
    config = json.loads((export / "config.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    assert type(hf).__name__ == ("ModtrainForCausalLM" if mod else "LlamaForCausalLM")
    ids = token_batch(2, SEQ, m.vocab_size)
    unscaled = GPT(dataclasses.replace(m, rope_scaling=RopeScalingConfig()), seed=3).eval()
    with torch.no_grad():
        ref = gpt(ids).logits
        hf_diff = (hf(ids).logits - ref).abs().max().item()
        core_diff = (load_export(export)(ids) - ref).abs().max().item()
        moved = (unscaled(ids).logits - ref).abs().max().item()
    print(f"{scaling} {'mod' if mod else 'dense'}: max |logit diff| HF {hf_diff:.1e}, modtrain "
          f"{core_diff:.1e}; unscaled RoPE differs by {moved:.1e}")
    assert hf_diff < TOLERANCE and core_diff < TOLERANCE
    assert moved > 100 * TOLERANCE  # the scaling changes the logits: the check can fail
    if scaling == "linear":
        assert config["rope_parameters"] == {"rope_type": "linear", "factor": 4.0,
                                             "rope_theta": 500.0}
        assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    else:  # static NTK: the scaled base, as a default rope
        assert config["rope_parameters"]["rope_type"] == "default"
        assert config["rope_theta"] == pytest.approx(500.0 * 4.0 ** (16 / 14))


def test_linear_scaling_interpolates_positions():
    """Linear scaling at position p gives the unscaled angles at p / factor."""
    from modtrain.model.rope import Rope

    scaled = Rope.table(64, 16, 500.0, RopeScalingConfig("linear", 4.0, 16))
    plain = Rope.table(64, 16, 500.0)
    torch.testing.assert_close(scaled.cos[::4], plain.cos[:16], rtol=0, atol=1e-6)


def _export_config(scaling: str) -> dict:
    m = _model(scaling, False)
    return {"max_position_embeddings": SEQ, "modtrain": {"model": dataclasses.asdict(m)}}


def test_context_past_training_needs_rope_scaling():
    assert context_window(_export_config("none"), None) == SEQ
    assert context_window(_export_config("none"), SEQ // 2) == SEQ // 2
    with pytest.raises(ModtrainError, match=r"past the model's 256-token training context.*"
                                            r"model\.rope_scaling"):
        context_window(_export_config("none"), 2 * SEQ)
    # factor 4 over the original 64 positions reaches 256 = SEQ: nothing past it either.
    with pytest.raises(ModtrainError, match=r"reaches 256 tokens; use --context 256"):
        context_window(_export_config("linear"), SEQ + 1)


def test_context_within_the_scaled_context_is_allowed():
    config = _export_config("linear")
    config["modtrain"]["model"]["max_seq_length"] = 128  # trained at 128 of the 256 scaled
    config["max_position_embeddings"] = 128
    assert context_window(config, 256) == 256


@pytest.mark.parametrize("key, value, message", [
    ("type", "yarn", "use none | linear | ntk"),
    ("factor", 0.5, "must be at least 1"),
    ("original_max_seq_length", 512, "between 0 and model.max_seq_length=256"),
])
def test_bad_rope_scaling_is_one_line(key, value, message):
    from modtrain.config import config_from_dict

    scaling = {"type": "linear", "factor": 2.0, key: value}
    with pytest.raises(ModtrainError, match=message):
        config_from_dict({"model": {"max_seq_length": SEQ, "rope_scaling": scaling},
                          "data": {"seq_length": SEQ}})


def test_generation_past_the_training_context_with_scaling(dist, tmp_path, char_tokenizer):
    """Trained at 128 of a 256-position scaled context: sampling with --context 256 runs
    past position 128 without restarting, and the cache gives what recomputation gives."""
    from modtrain.data.tokenizer import Tokenizer
    from modtrain.inference.generate import generate_ids, generate_text

    m = dataclasses.replace(_model("linear", True), max_seq_length=128,
                            vocab_size=Tokenizer(char_tokenizer).vocab_size)
    _, export = _export(tmp_path, m, char_tokenizer)
    model = load_export(export)
    prompt = token_batch(1, 8, m.vocab_size, seed=2)
    cached = generate_ids(model, prompt, 200, window=256)
    fresh = generate_ids(model, prompt, 200, use_cache=False, window=256)
    assert cached.ids.shape[1] == 208 and torch.equal(cached.ids, fresh.ids)
    texts, result = generate_text(export, "To be", 140, context=256, seed=1)
    assert result.new_tokens == 140
    with pytest.raises(ModtrainError, match="reaches 256 tokens"):
        generate_text(export, "To be", 1, context=257)
