"""`modtrain convert` on a damaged checkpoint refuses and names the older tags that verify;
checkpoints saved before modtrain recorded checksums still convert."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from modtrain.checkpoint.format import MANIFEST
from modtrain.checkpoint.read.reader import read_checkpoint
from tests.conftest import cli_env

MODEL = "mp_rank_00_model_states.pt"


def _two_tags(tmp_path: Path, mod_run: Path) -> Path:
    """A checkpoints/ directory holding the run's step-4 checkpoint as steps 2, 3 and 4."""
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 3, 4):
        shutil.copytree(mod_run / "checkpoints" / "step_00000004", root / f"step_{step:08d}")
    (root / "latest").write_text("step_00000004")
    return root


def test_convert_of_a_damaged_tag_names_the_older_tags_that_verify(tmp_path, mod_run):
    root = _two_tags(tmp_path, mod_run)
    model = root / "step_00000004" / MODEL
    model.write_bytes(model.read_bytes()[:1000])
    (root / "step_00000003" / "rng_rank_00000.pt").unlink()
    proc = subprocess.run([sys.executable, "-m", "modtrain", "convert", str(tmp_path / "run"),
                           "--out", str(tmp_path / "export")], env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    saved = (mod_run / "checkpoints" / "step_00000004" / MODEL).stat().st_size
    assert proc.stderr.strip().splitlines() == [
        f"modtrain: error: {root / 'step_00000004'} is damaged ({MODEL} has 1000 bytes, "
        f"{saved} were saved); these older checkpoints verify: step_00000002 (pass one, e.g. "
        f"{root / 'step_00000002'})"
    ]
    assert not (tmp_path / "export").exists()
    assert read_checkpoint(root / "step_00000002").step == 4


def test_checkpoint_saved_before_checksums_still_reads(tmp_path, mod_run):
    root = _two_tags(tmp_path, mod_run)
    (root / "step_00000004" / MANIFEST).unlink()
    assert read_checkpoint(root.parent).tag_dir == root / "step_00000004"
