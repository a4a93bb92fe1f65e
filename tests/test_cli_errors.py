"""Every error a user can cause is one line, `modtrain: error: ...`, with exit code 2: the
real command line in a subprocess, walked over bad configs, paths and arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.train.helpers import tiny_config


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _earlier_run(d: Path) -> None:
    _write(d / "run" / "checkpoints" / "step_00000004" / "modtrain.json", "{}")
    _write(d / "run" / "checkpoints" / "latest", "step_00000004")


# (name, arguments given the test's directory and a valid tiny config, expected text)
CASES = [
    ("yaml syntax", lambda d, c: ["train", str(_write(d / "bad.yaml", "train:\n  steps: [1, 2\n"
                                                      "model: {a: 1}\n"))], "bad.yaml:3:"),
    ("yaml tab", lambda d, c: ["train", str(_write(d / "tab.yaml", "run:\n\tdir: x\n"))],
     "tab.yaml:2:1: invalid YAML"),
    ("yaml not a mapping", lambda d, c: ["train", str(_write(d / "list.yaml", "- 1\n- 2\n"))],
     "must hold a mapping"),
    ("yaml binary", lambda d, c: ["train", str(_write(d / "bin.yaml", b"\xff\xfe\x00"))],
     "not UTF-8"),
    ("yaml section is a value", lambda d, c: ["train", str(_write(d / "s.yaml", "train: 3\n"))],
     "is a section"),
    ("config missing", lambda d, c: ["train", str(d / "none.yaml")], "does not exist"),
    ("override syntax", lambda d, c: ["train", str(c), "train.steps=[1,"], "not valid YAML"),
    ("override form", lambda d, c: ["train", str(c), "train.steps"], "section.key=value"),
    ("override type", lambda d, c: ["train", str(c), "train.steps=many"], "expects int"),
    ("unknown key", lambda d, c: ["train", str(c), "train.stpes=3"], "did you mean"),
    ("negative micro-batch", lambda d, c: ["train", str(c), "train.micro_batch_size=-1"],
     "or 0 to derive it"),
    ("run dir under a file", lambda d, c: ["train", str(c),
                                           f"run.dir={_write(d / 'f.txt', 'x')}/run"],
     "is not a writable directory (Not a directory)"),
    ("run dir is a file", lambda d, c: ["train", str(c), f"run.dir={_write(d / 'g', 'x')}"],
     "is not a writable directory"),
    ("run dir unwritable", lambda d, c: ["train", str(c), "run.dir=/proc/modtrain-run"],
     "is not a writable directory"),
    # 64 layers of width 16384: ~200B parameters, 3 TB of fp32 Adam states on one process
    ("model too large", lambda d, c: ["train", str(c), "model.hidden_size=16384",
                                      "model.num_layers=64", "model.num_heads=128"],
     "GiB per rank for its weights, gradients and optimizer states alone"),
    ("earlier run", lambda d, c: (_earlier_run(d), ["train", str(c)])[1],
     "already holds a run (checkpoint step_00000004)"),
    ("overwrite and resume", lambda d, c: ["train", str(c), "--overwrite", "--resume", "auto"],
     "pass only one of them"),
    ("tokenizer input missing", lambda d, c: ["tokenizer", "train", "--input",
                                              str(d / "no.txt"), "--out", str(d / "t")],
     "does not exist"),
    ("prepare input missing", lambda d, c: ["data", "prepare", "--tokenizer", str(d / "t.model"),
                                            "--input", str(d / "no.txt"), "--out",
                                            str(d / "s.zarr")], "no.txt"),
    ("inspect store missing", lambda d, c: ["data", "inspect", str(d / "none.zarr")],
     "none.zarr"),
    ("convert run missing", lambda d, c: ["convert", str(d / "norun"), "--out", str(d / "e")],
     "norun"),
    ("generate export missing", lambda d, c: ["generate", str(d / "noexport")], "noexport"),
    # An OSError anywhere is the OS's words and the path, not a traceback.
    ("tokenizer out under a file", lambda d, c: [
        "tokenizer", "train", "--input", str(_write(d / "a.txt", "abc\n")), "--out",
        str(_write(d / "f", "x") / "t")], "modtrain: error: File exists: "),
    ("prepare garbage tokenizer", lambda d, c: [
        "data", "prepare", "--tokenizer", str(_write(d / "g.model", b"\x8f junk\x00" * 9)),
        "--input", str(_write(d / "a.txt", "abc\n")), "--out", str(d / "s.zarr")],
     "g.model is not a SentencePiece model"),
    ("convert out is a file", lambda d, c: ["convert", str(d / "norun"), "--out",
                                            str(_write(d / "e", "x"))], "is a file"),
    ("inspect damaged config", lambda d, c: [
        "inspect", str(_write(d / "r" / "config.yaml", "model: {}\n").parent)], "is damaged"),
    ("generate truncated export", lambda d, c: [
        "generate", str(_write(d / "x" / "model.safetensors", b"\x10\x00").parent)],
     "not a modtrain export"),
]


@pytest.mark.parametrize("make_args,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_user_errors_are_one_line(tmp_path, char_store, char_tokenizer, make_args, expected):
    config = tiny_config(tmp_path, char_store, char_tokenizer, "run")
    proc = subprocess.run([sys.executable, "-m", "modtrain", *make_args(tmp_path, config)],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("modtrain: error: "), proc.stderr[-3000:]
    assert expected in lines[0]
