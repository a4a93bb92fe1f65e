"""Checkpoints written by earlier modtrain (tests/checkpoint/data/) resume and convert."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env

REPO = Path(__file__).resolve().parents[2]
OLD_RUN = Path(__file__).parent / "data" / "zero1_mod_2steps"
# The overrides it was trained with (tests/checkpoint/data/README.md).
OVERRIDES = ["model.num_layers=2", "model.hidden_size=16", "model.num_heads=2",
             "model.max_seq_length=16", "data.seq_length=16", "model.mod.capacity=0.25",
             "train.global_batch_size=2", "train.micro_batch_size=2", "train.eval_batches=1",
             "train.warmup_steps=1", "train.save_interval=3", "train.eval_interval=3",
             "train.log_interval=1", "train.zero_stage=1"]


def _modtrain(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "modtrain", *args], env=cli_env(),
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy of the old run (resuming writes into it)."""
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run"))


@pytest.mark.slow
def test_an_old_checkpoint_resumes_training(tmp_path, old_run, corpus):
    from modtrain.data.write.prepare import prepare_store

    store = prepare_store(old_run / "char.model", [corpus], tmp_path / "s.zarr")
    proc = _modtrain("train", str(REPO / "configs" / "shakespeare_mod.yaml"),
                     f"run.dir={old_run}", f"data.store={store}",
                     f"data.tokenizer={old_run / 'char.model'}", "run.resume=auto",
                     "train.steps=3", *OVERRIDES)
    assert "resumed from step 2" in proc.stdout + proc.stderr
    assert (old_run / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert (old_run / "checkpoints" / "step_00000003" / "modtrain.json").is_file()


@pytest.mark.slow
def test_an_old_checkpoint_converts_to_the_logits_it_was_trained_to(dist, tmp_path, old_run):
    from modtrain.checkpoint.read.reader import read_checkpoint
    from modtrain.inference.export import load_export
    from modtrain.inference.hf_layout import model_config
    from modtrain.model import GPT

    export = tmp_path / "export"
    _modtrain("convert", str(old_run), "--out", str(export),
              "--tokenizer", str(old_run / "char.model"))
    ckpt = read_checkpoint(old_run)
    assert (ckpt.step, ckpt.zero_stage, ckpt.data_parallel) == (2, 1, 1)
    gpt = GPT(model_config(ckpt.config["model"]))
    missing, unexpected = gpt.load_state_dict(ckpt.tensors, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    ids = torch.randint(2, ckpt.config["model"]["vocab_size"], (2, 16),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gpt.eval()(ids).logits
        ours = load_export(export)(ids)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-5
