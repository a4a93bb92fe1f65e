"""Checksums of every checkpoint file: recorded at save, checked before resume, a damaged
checkpoint skipped for the newest older one that verifies (or refused on request)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from modtrain.checkpoint.engine import save_load
from modtrain.checkpoint.engine.resume import current_layout, plan_resume
from modtrain.checkpoint.files import tag_files
from modtrain.checkpoint.format import MANIFEST
from modtrain.checkpoint.tags import latest_tag
from modtrain.errors import ModtrainError
from tests.checkpoint.engine.test_save_load import _engine
from tests.train.helpers import run, single_command, tiny_config

LAYOUT = current_layout(1, 1, 1, 1)
MODEL = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def three_tags(tmp_path_factory, dist, char_store, char_tokenizer) -> Path:
    """Checkpoints of steps 1-3 saved by an in-process engine (ZeRO-1)."""
    tmp = tmp_path_factory.mktemp("tags")
    engine, state = _engine(tmp, char_store, char_tokenizer)
    for step in (1, 2, 3):
        save_load.save(engine, tmp / "ckpt", replace(state, step=step))
    return tmp / "ckpt"


@pytest.fixture
def root(tmp_path, three_tags) -> Path:
    shutil.copytree(three_tags, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_records_size_and_sha256_of_every_file(three_tags):
    tag_dir = three_tags / "step_00000003"
    files = json.loads((tag_dir / MANIFEST).read_text())["files"]
    assert set(files) == set(tag_files(tag_dir)) >= {MODEL, "modtrain.json",
                                                     "rng_rank_00000.pt"}
    for name, entry in files.items():
        data = (tag_dir / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_damaged_latest_falls_back_to_the_newest_that_verifies(root):
    saved = (root / "step_00000003" / MODEL).stat().st_size
    _truncate(root / "step_00000003" / MODEL)
    _flip_a_byte(next((root / "step_00000002").glob("*optim_states.pt")))
    logs: list[str] = []
    plan = plan_resume(root, LAYOUT, log=logs.append)
    assert (plan.tag, plan.step) == ("step_00000001", 1)
    size = (root / "step_00000003" / MODEL).stat().st_size
    assert logs == [
        "resuming from step_00000001, the newest checkpoint that verifies: step_00000003 is "
        f"damaged ({MODEL} has {size} bytes, {saved} were saved); step_00000002 is damaged "
        "(zero_pp_rank_0_mp_rank_00_optim_states.pt does not match its saved sha256)"
    ]


def test_resume_fallback_false_refuses_a_damaged_latest(root):
    (root / "step_00000003" / "rng_rank_00000.pt").unlink()
    with pytest.raises(ModtrainError) as err:
        plan_resume(root, LAYOUT, fallback=False)
    assert str(err.value) == (
        "step_00000003 is damaged (rng_rank_00000.pt is missing); run.resume_fallback=false: "
        "restore the file, or resume from the newest checkpoint that verifies with "
        "run.resume_fallback=true"
    )


def test_no_checkpoint_that_verifies_is_one_line(root):
    for tag in ("step_00000001", "step_00000002", "step_00000003"):
        _truncate(root / tag / MODEL)
    with pytest.raises(ModtrainError, match="no checkpoint in .* can be resumed from") as err:
        plan_resume(root, LAYOUT)
    assert "\n" not in str(err.value) and str(err.value).count("is damaged") == 3


def test_checkpoints_saved_before_checksums_resume_not_verified(root):
    for tag in ("step_00000001", "step_00000002", "step_00000003"):
        (root / tag / MANIFEST).unlink()
    logs: list[str] = []
    assert plan_resume(root, LAYOUT, log=logs.append).tag == "step_00000003"
    assert logs == ["step_00000003 has no checksums (saved before modtrain recorded them): "
                    "not verified"]
    # Without checksums a truncated file is still found: torch cannot parse it.
    _truncate(root / "step_00000003" / MODEL)
    logs.clear()
    assert plan_resume(root, LAYOUT, log=logs.append).tag == "step_00000002"
    assert logs[0] == ("step_00000002 has no checksums (saved before modtrain recorded them): "
                       "not verified")
    assert logs[1].startswith("resuming from step_00000002, the newest checkpoint that "
                              f"verifies: step_00000003 is damaged ({MODEL} cannot be read")


def test_nothing_to_resume_says_so(tmp_path):
    logs: list[str] = []
    assert plan_resume(tmp_path / "ckpt", LAYOUT, log=logs.append) is None
    assert logs == [f"--resume auto: no checkpoint in {tmp_path / 'ckpt'} yet; "
                    "starting from step 0"]


def test_truncated_checkpoint_resumes_from_the_older_one(tmp_path, char_store, char_tokenizer):
    """The reported case: `--resume auto` stopped with a 43-line traceback."""
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "run", steps=4)
    run(single_command(cfg, "train.save_interval=2"))
    _truncate(tmp_path / "run" / "checkpoints" / "step_00000004" / MODEL)
    proc = run(single_command(cfg, "train.steps=5", "train.save_interval=2", "--resume", "auto"))
    assert "resuming from step_00000002, the newest checkpoint that verifies: step_00000004 " \
           f"is damaged ({MODEL} has" in proc.stderr
    assert "resumed from step 2" in proc.stderr and "Traceback" not in proc.stderr
    assert latest_tag(tmp_path / "run" / "checkpoints") == "step_00000005"
