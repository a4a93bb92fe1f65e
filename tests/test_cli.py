"""The command line end to end on a tiny corpus, and its one-line errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import cli_env


def modtrain(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "modtrain", *args], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


TINY = ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
        "model.max_seq_length=32", "data.seq_length=32", "train.global_batch_size=4",
        "train.micro_batch_size=4", "train.eval_batches=2", "train.warmup_steps=2"]


@pytest.mark.slow
def test_tokenizer_store_train_convert_generate(tmp_path, corpus):
    tok = tmp_path / "tok"
    modtrain("tokenizer", "train", "--input", str(corpus), "--out", str(tok), "--type", "char")
    store = tmp_path / "s.zarr"
    modtrain("data", "prepare", "--tokenizer", f"{tok}.model", "--input", str(corpus),
             "--out", str(store))
    info = json.loads(modtrain("data", "inspect", str(store)).stdout)
    assert info["num_tokens"] == len(corpus.read_text()) + 1

    run = tmp_path / "run"
    proc = modtrain("train", "configs/shakespeare_mod.yaml", f"run.dir={run}",
                    f"data.store={store}", f"data.tokenizer={tok}.model", "train.steps=6",
                    "train.log_interval=2", "train.eval_interval=3", "train.save_interval=3",
                    *TINY)
    assert "val loss" in proc.stdout
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "routed_frac/layer1",
                "router_bce/layer1", "router_acc/layer1", "predictor_acc/layer1"):
        assert key in steps[-1], key
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert (run / "checkpoints" / "step_00000003").is_dir()

    export = tmp_path / "export"
    modtrain("convert", str(run), "--out", str(export))
    assert {p.name for p in export.iterdir()} >= {"model.safetensors", "config.json",
                                                   "tokenizer.model"}
    out = modtrain("generate", str(export), "--prompt", "ROMEO:", "--max-new-tokens", "20",
                   "--temperature", "0").stdout
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) >= len("ROMEO:") + 1

    # Resume: continuing the run to step 8 starts from the step-6 checkpoint.
    proc = modtrain("train", str(run / "config.yaml"), "train.steps=8", "--resume", "auto")
    assert "resumed from step 6" in proc.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r][-1] == 8


@pytest.mark.parametrize("make_args,message", [
    (lambda d: ["tokenizer", "train", "--input", str(d / "missing.txt"), "--out", str(d / "t")],
     "does not exist"),
    (lambda d: ["tokenizer", "train", "--input", str(d / "empty.txt"), "--out", str(d / "t")],
     "is empty"),
    (lambda d: ["train", "configs/shakespeare_mod.yaml", "model.mod.capcity=0.5"],
     "did you mean 'model.mod.capacity'"),
    (lambda d: ["train", "configs/shakespeare_mod.yaml", "model.mod.capacity=1.25"],
     "outside (0, 1]"),
    (lambda d: ["train", "configs/shakespeare_mod.yaml", "data.seq_length=256"],
     "larger than the model's"),
    (lambda d: ["train", "configs/shakespeare_mod.yaml", f"data.store={d / 'none.zarr'}"],
     "create it with 'modtrain data prepare'"),
    (lambda d: ["train", str(d / "nope.yaml")], "does not exist"),
])
def test_bad_input_is_one_clear_line(tmp_path, make_args, message):
    (tmp_path / "empty.txt").write_text("")
    proc = modtrain(*make_args(tmp_path), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modtrain: error: "), proc.stderr
    assert message in lines[0]


def test_the_command_line_starts_without_torch_megatron_or_deepspeed():
    """Every command group registers without the heavy libraries (they print warnings at
    import on CPU, and cost seconds): each command imports what it needs when it runs."""
    code = ("import sys; from modtrain.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'megatron', 'deepspeed'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
