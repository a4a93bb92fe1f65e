"""`modtrain eval`: lm-evaluation-harness's shipped perplexity task on dense and MoD exports."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from modtrain.inference.evaluate import shakespeare_passages
from tests.conftest import cli_env

pytest.importorskip("lm_eval")


def _eval(export, *args: str) -> subprocess.CompletedProcess:
    env = {**cli_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "modtrain", "eval", str(export), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_shipped_passages_are_small_whole_speeches():
    passages = shakespeare_passages()
    assert len(passages) == 200 and all(p.endswith("\n") and p.strip() for p in passages)
    assert sum(len(p) for p in passages) < 100_000


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "mod"])
def test_eval_writes_the_metric(kind, request, tmp_path):
    export = request.getfixturevalue(f"{kind}_export")
    out = tmp_path / "results.json"
    proc = _eval(export, "--tasks", "shakespeare_ppl", "--limit", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]["shakespeare_ppl"]
    bpb = results["bits_per_byte,none"]
    # A 4-step model is near uniform over the 67 characters: log2(67) = 6.07 bits.
    assert 1.0 < bpb < 8.0 and math.isfinite(results["word_perplexity,none"])
    assert "shakespeare_ppl: " in proc.stdout


def test_an_export_transformers_cannot_load_gives_one_line(dense_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dense_export, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    proc = _eval(broken, "--limit", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"modtrain: error: {broken} cannot be loaded for evaluation"), proc.stderr
