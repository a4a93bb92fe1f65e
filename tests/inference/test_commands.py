"""`modtrain convert` / `modtrain generate` on the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import cli_env


def _modtrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modtrain", *args], env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def test_convert_and_generate_batch_with_stop(tmp_path, mod_run):
    export = tmp_path / "export"
    proc = _modtrain("convert", str(mod_run), "--out", str(export), "--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _modtrain("generate", str(export), "--prompt", "ROMEO:", "--max-new-tokens", "60",
                     "--num-samples", "2", "--temperature", "1", "--top-k", "20",
                     "--top-p", "0.95", "--stop", "e", "--routing", "router", "--stats")
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples = proc.stdout.split("--- sample ")[1:]
    assert len(samples) == 2
    for sample in samples:
        text = sample.split("\n", 1)[1].rstrip("\n")
        assert text.startswith("ROMEO:") and "e" not in text[len("ROMEO:"):]
    assert "tokens/s" in proc.stderr and "KiB allocated" in proc.stderr


@pytest.mark.parametrize("make_args,message", [
    (lambda d, e: ["convert", str(d), "--out", str(d / "x")], "holds no modtrain checkpoint"),
    (lambda d, e: ["generate", str(d)], "is not a modtrain export"),
    (lambda d, e: ["generate", str(e), "--top-p", "1.5"], "--top-p 1.5 is outside (0, 1]"),
    (lambda d, e: ["generate", str(e), "--device", "gpu0"], "--device 'gpu0' is not a device"),
    (lambda d, e: ["generate", str(e), "--device", "meta"], "inference runs on cpu or cuda"),
])
def test_bad_input_is_one_clear_line(tmp_path, mod_export, make_args, message):
    proc = _modtrain(*make_args(tmp_path, mod_export))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modtrain: error: "), proc.stderr
    assert message in lines[0]


def test_generate_on_a_chosen_device_and_dtype(mod_export):
    proc = _modtrain("generate", str(mod_export), "--prompt", "ROMEO:", "--max-new-tokens", "8",
                     "--temperature", "1", "--device", "cpu", "--dtype", "bf16", "--stats")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ROMEO:") and "8 tokens x 1 rows" in proc.stderr
