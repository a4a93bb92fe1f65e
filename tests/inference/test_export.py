"""Exports load in Hugging Face transformers and give the training model's logits.

Measured on these tiny runs (fp32, CPU): max |logit difference| to the megatron-core
training model is 0 for the MoD export (transformers and modtrain's own model, top-k and
causal routing) and about 1e-7 for transformers' Llama; on the trained shakespeare models
up to 7.6e-6 (docs/benchmarks_inference.md). The tolerance below is 1e-4.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.inference.export import convert_checkpoint, load_export
from modtrain.inference.hf_template import REMOTE_CODE_FILES
from tests.inference.conftest import SEQ, shift_predictors, token_batch, training_model

TOLERANCE = 1e-4


def _vocab(export: Path) -> int:
    return json.loads((export / "config.json").read_text())["vocab_size"]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _hf(export: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()


def test_export_files_hold_no_pickle(mod_export, dense_export):
    assert {p.name for p in dense_export.iterdir()} == {
        "model.safetensors", "config.json", "tokenizer.model"}
    assert {p.name for p in mod_export.iterdir()} == {
        "model.safetensors", "config.json", "tokenizer.model", *REMOTE_CODE_FILES}
    for export in (mod_export, dense_export):
        # Every file is one of: safetensors (8-byte length + JSON header), JSON, Python
        # source, or a SentencePiece protobuf; none is a pickle or a torch.save zip.
        raw = (export / "model.safetensors").read_bytes()
        header = int.from_bytes(raw[:8], "little")
        json.loads(raw[8 : 8 + header])
        with safe_open(str(export / "model.safetensors"), "pt") as f:
            assert f.metadata() == {"format": "pt"}
        json.loads((export / "config.json").read_text())
        for path in export.glob("*.py"):
            ast.parse(path.read_text())
        head = (export / "tokenizer.model").read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"  # pickle PROTO opcode / zip magic
        Tokenizer(export / "tokenizer.model")


def test_dense_export_is_a_llama_checkpoint(dist, dense_run, dense_export):
    from transformers import LlamaForCausalLM

    model = _hf(dense_export)
    assert type(model) is LlamaForCausalLM
    assert not model.config.tie_word_embeddings  # this run trained an untied output layer
    ids = token_batch(3, SEQ, _vocab(dense_export))
    with torch.no_grad():
        ref = training_model(dense_run)(ids).logits
        diff = _max_diff(model(ids).logits, ref)
        core = _max_diff(load_export(dense_export)(ids), ref)
    print(f"dense: max |logit diff| HF Llama {diff:.2e}, modtrain inference model {core:.2e}")
    assert diff < TOLERANCE and core < TOLERANCE


def test_mod_export_loads_with_remote_code(dist, mod_run, mod_export):
    model = _hf(mod_export)
    assert type(model).__name__ == "ModtrainForCausalLM"
    assert model.config.mod_routed_layers == [1, 3]
    ids = token_batch(3, SEQ, _vocab(mod_export))
    gpt = training_model(mod_run)
    with torch.no_grad():
        ref = gpt(ids).logits
        # A plain call routes as trained (top-k); the loss uses the same logits.
        out = model(ids, labels=ids)
        diff = _max_diff(out.logits, ref)
        ours = _max_diff(load_export(mod_export)(ids), ref)
    print(f"MoD top-k: max |logit diff| HF {diff:.2e}, modtrain {ours:.2e}")
    assert diff < TOLERANCE and ours < TOLERANCE and torch.isfinite(out.loss)


def _routed_fraction(gpt, ids) -> float:
    stats = gpt(ids, routing="causal").stats
    return float(sum(v for k, v in stats.items() if k.startswith("routed_frac")) / 2)


@pytest.mark.parametrize("decision", ["router", "predictor"])
def test_mod_causal_routing_matches_training(dist, mod_run, balanced_predictor_export,
                                             decision):
    """Causal routing (what sampling uses), by router sign or by the predictor."""
    from transformers import AutoModelForCausalLM

    export, shifts = balanced_predictor_export
    ids = token_batch(3, SEQ, _vocab(export))
    gpt = shift_predictors(training_model(mod_run), shifts)
    gpt.config.mod.inference_routing = decision
    model = AutoModelForCausalLM.from_pretrained(
        export, trust_remote_code=True, mod_inference_routing=decision).eval()
    with torch.no_grad():
        fraction = _routed_fraction(gpt, ids)
        assert 0.1 < fraction < 0.9, fraction  # rows really mix routed and skipped tokens
        ref = gpt(ids, routing="causal").logits
        diff = _max_diff(model(ids, routing="causal").logits, ref)
        core = load_export(export, inference_routing=decision)
        ours = _max_diff(core(ids, routing="causal"), ref)
    print(f"MoD causal ({decision}, {fraction:.0%} routed): max |logit diff| HF {diff:.2e}, "
          f"modtrain {ours:.2e}")
    assert diff < TOLERANCE and ours < TOLERANCE


def test_hf_generate_equals_modtrain_generate(mod_export):
    from modtrain.inference.generate import generate_ids

    model = _hf(mod_export)
    prompt = token_batch(2, 6, _vocab(mod_export), seed=3)
    new = SEQ - prompt.shape[1]  # stay inside the trained window: HF does not restart it
    hf_ids = model.generate(prompt, max_new_tokens=new, do_sample=False,
                            attention_mask=torch.ones_like(prompt))
    no_cache = model.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=False,
                              attention_mask=torch.ones_like(prompt))
    ours = generate_ids(load_export(mod_export), prompt, new).ids
    assert torch.equal(hf_ids, ours) and torch.equal(no_cache, ours)


def test_bf16_export(tmp_path, mod_run, mod_export):
    export = convert_checkpoint(mod_run, tmp_path / "bf16", dtype="bf16")
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict) == {torch.bfloat16}
    assert json.loads((export / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ids = token_batch(2, SEQ, _vocab(mod_export))
    with torch.no_grad():
        diff = _max_diff(load_export(export)(ids), load_export(mod_export)(ids))
    assert 0 < diff < 0.1  # bf16 weights: rounded, close


def test_remote_code_imports_only_torch_and_transformers(mod_export):
    allowed = {"__future__", "math", "dataclasses", "typing", "torch", "transformers"}
    for name in REMOTE_CODE_FILES:
        tree = ast.parse((mod_export / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots)


def test_convert_replaces_an_export_but_nothing_else(tmp_path, mod_run):
    out = convert_checkpoint(mod_run, tmp_path / "export")
    (out / "stale.txt").write_text("from an earlier export")
    convert_checkpoint(mod_run, out)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temp dirs left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModtrainError, match="is not a modtrain export"):
        convert_checkpoint(mod_run, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_missing_tokenizer_is_one_clear_error(tmp_path, mod_run):
    with pytest.raises(ModtrainError, match="--tokenizer"):
        convert_checkpoint(mod_run, tmp_path / "e", tokenizer=tmp_path / "none.model")
    assert not (tmp_path / "e").exists()


def test_padded_vocabulary_rows_are_dropped(dist, tmp_path, char_tokenizer):
    """Vocabulary padding (for tensor parallelism) never reaches the export."""
    from modtrain.config import config_to_dict, load_config
    from modtrain.inference.export import write_export
    from modtrain.model import GPT

    vocab = 61
    config = load_config(None, [
        f"model.vocab_size={vocab}", "model.vocab_multiple=64", "model.num_layers=2",
        "model.hidden_size=32", "model.num_heads=2", f"model.max_seq_length={SEQ}",
        f"data.seq_length={SEQ}", "model.mod.enabled=true", "model.tie_embeddings=false"])
    torch.manual_seed(0)
    gpt = GPT(config.model).eval()
    assert gpt.embedding.weight.shape[0] == 64
    state = {k: v for k, v in gpt.state_dict().items() if isinstance(v, torch.Tensor)}
    export = write_export(state, config_to_dict(config)["model"], tmp_path / "e", char_tokenizer)
    ids = token_batch(2, SEQ, vocab)
    with torch.no_grad():
        ref = gpt(ids).logits[..., :vocab]
        ours = load_export(export)(ids)
        theirs = _hf(export)(ids).logits
    assert ours.shape[-1] == theirs.shape[-1] == vocab
    assert _max_diff(ours, ref) < TOLERANCE and _max_diff(theirs, ref) < TOLERANCE


def test_mod_export_runs_without_cache_deprecations(mod_export):
    """No transformers release the export supports warns about the cache's name, and
    `generate` continues its cache (one new token per forward after the prompt)."""
    import logging
    import warnings

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    once = getattr(logging.Logger, "warning_once", None)  # transformers' once-only warnings
    if hasattr(once, "cache_clear"):
        once.cache_clear()
    handler, hf_logger = Collect(logging.DEBUG), logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = _hf(mod_export)
            lengths: list[int] = []
            model.model.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
            prompt = token_batch(2, 6, _vocab(mod_export), seed=3)
            with torch.no_grad():
                model(prompt)
                out = model(prompt, use_cache=True, routing="causal")
                model(prompt[:, :1], cache=out.cache if hasattr(out, "cache") else out[1])
            lengths.clear()
            model.generate(prompt, max_new_tokens=5, do_sample=False,
                           attention_mask=torch.ones_like(prompt))
    finally:
        hf_logger.removeHandler(handler)
    messages = records + [str(w.message) for w in caught]
    assert not [m for m in messages if "past_key_values" in m or "deprecat" in m.lower()], \
        messages
    assert lengths == [6, 1, 1, 1, 1]
