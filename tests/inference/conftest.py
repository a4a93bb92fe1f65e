"""Tiny trained runs and their exports, shared by the inference tests.

The runs are real: `modtrain train` through the CLI (DeepSpeed engine, ZeRO), a few steps
on the tiny corpus, then `convert`. The MoD run uses ZeRO-1 and tied embeddings, the dense
one ZeRO-3 and an untied output layer, so both reconstruction paths and both head layouts
are exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env

REPO = Path(__file__).resolve().parents[2]
SEQ = 32
TINY = ["model.num_layers=4", "model.hidden_size=32", "model.num_heads=2",
        f"model.max_seq_length={SEQ}", f"data.seq_length={SEQ}", "model.mod.capacity=0.25",
        "train.global_batch_size=4", "train.micro_batch_size=4", "train.eval_batches=1",
        "train.warmup_steps=1", "train.steps=4", "train.save_interval=4",
        "train.eval_interval=4", "train.log_interval=2"]


@pytest.fixture(scope="session", autouse=True)
def hf_offline(tmp_path_factory):
    """transformers loads from local directories only; remote code is cached in a temp dir."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))


def train_run(run: Path, store: Path, tokenizer: Path, *overrides: str,
              launcher: list[str] | None = None) -> Path:
    cmd = [*(launcher or [sys.executable]), "-m", "modtrain", "train",
           str(REPO / "configs" / "shakespeare_mod.yaml"), f"run.dir={run}",
           f"data.store={store}", f"data.tokenizer={tokenizer}", *TINY, *overrides]
    if launcher:  # the deepspeed launcher takes --module instead of -m
        cmd[len(launcher)] = "--module"
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def mod_run(tmp_path_factory, char_store, char_tokenizer) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "mod", char_store, char_tokenizer,
                     "train.zero_stage=1")


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory, char_store, char_tokenizer) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "dense", char_store, char_tokenizer,
                     "model.mod.enabled=false", "train.zero_stage=3",
                     "model.tie_embeddings=false")


@pytest.fixture(scope="session")
def mod_export(tmp_path_factory, mod_run) -> Path:
    from modtrain.inference.export import convert_checkpoint

    return convert_checkpoint(mod_run, tmp_path_factory.mktemp("exports") / "mod")


@pytest.fixture(scope="session")
def dense_export(tmp_path_factory, dense_run) -> Path:
    from modtrain.inference.export import convert_checkpoint

    return convert_checkpoint(dense_run, tmp_path_factory.mktemp("exports") / "dense")


def training_model(run: Path):
    """The run's megatron-core GPT with the checkpoint's weights (needs the `dist` fixture)."""
    from modtrain.checkpoint.read.reader import read_checkpoint
    from modtrain.inference.hf_layout import model_config
    from modtrain.model import GPT

    ckpt = read_checkpoint(run)
    model = GPT(model_config(ckpt.config["model"]))
    missing, unexpected = model.load_state_dict(ckpt.tensors, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    return model.eval()


def token_batch(rows: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (rows, length), generator=g)


@pytest.fixture(scope="session")
def balanced_predictor_export(tmp_path_factory, mod_export) -> tuple[Path, dict[int, float]]:
    """The MoD export with each predictor's output bias shifted so that it routes about half
    the tokens (a 4-step predictor routes none yet). Returns (export dir, bias shifts)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from modtrain.inference.export import load_export

    export = tmp_path_factory.mktemp("exports") / "mod_balanced"
    shutil.copytree(mod_export, export)
    tensors = load_file(str(export / "model.safetensors"))
    model = load_export(mod_export)
    ids = token_batch(4, SEQ, model.config.vocab_size, seed=7)
    shifts: dict[int, float] = {}
    for i in model.config.mod_routed_layers:  # in order: a shift changes later layers' inputs
        seen = []
        predictor = model.model.layers[i].router.predictor
        hook = predictor.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out))
        with torch.no_grad():
            model(ids, "causal")
        hook.remove()
        shifts[i] = -float(seen[0].median())
        predictor[2].bias.data += shifts[i]
        tensors[f"model.layers.{i}.router.predictor.2.bias"] += shifts[i]
    save_file(tensors, str(export / "model.safetensors"), metadata={"format": "pt"})
    return export, shifts


def shift_predictors(gpt, shifts: dict[int, float]):
    for i, shift in shifts.items():
        gpt.blocks[i].router.predictor[2].bias.data += shift
    return gpt
