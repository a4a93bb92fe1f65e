"""Loading a checkpoint never runs code a pickle names: resume, `modtrain checkpoint
universal` and a layout-changing resume refuse such a file in one line."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modtrain.checkpoint.engine import save_load, universal
from modtrain.checkpoint.files import checksums, tag_files, write_manifest
from modtrain.checkpoint.format import DEEPSPEED_GLOBALS, RECOVERY_SCRIPTS
from modtrain.errors import ModtrainError
from tests.checkpoint.engine.test_save_load import _engine
from tests.train.helpers import run, single_command, tiny_config

TAG = "step_00000002"


class Payload:
    """Pickles as a call of exec: loading it with weights_only=False writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def plant(path: Path, marker: Path) -> None:
    """Add the payload to a torch file and re-record the tag's checksums, as an attacker who
    shares a whole checkpoint folder would."""
    state = torch.load(path, weights_only=False)  # our own file, written by the test run
    state["extra"] = Payload(marker)
    torch.save(state, path)
    tag_dir = next(p for p in path.parents if p.name.startswith("step_"))
    write_manifest(tag_dir, checksums(tag_dir, tag_files(tag_dir)))


def assert_refused(proc, path: Path, marker: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"modtrain: error: {path} holds a Python object that modtrain "
                                "will not unpickle (builtins.exec)"), proc.stderr[-2000:]
    assert sum(line.startswith("modtrain: error:") for line in lines) == 1
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, char_store, char_tokenizer) -> Path:
    """A one-process ZeRO-1 run with one checkpoint (step 2)."""
    root = tmp_path_factory.mktemp("safety")
    run(single_command(tiny_config(root, char_store, char_tokenizer, "run", steps=2)))
    return root


def _copy(saved_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the run (config pointing at it) and its tag directory."""
    run_dir = tmp_path / "run"
    shutil.copytree(saved_run / "run", run_dir)
    cfg = tmp_path / "run.yaml"
    cfg.write_text((saved_run / "run.yaml").read_text().replace(str(saved_run), str(tmp_path)))
    return cfg, run_dir / "checkpoints" / TAG


@pytest.mark.parametrize("pattern", ["mp_rank_00_model_states.pt", "*optim_states.pt"])
def test_pickled_code_never_runs_on_resume(tmp_path, saved_run, pattern):
    cfg, tag_dir = _copy(saved_run, tmp_path)
    target = next(tag_dir.glob(pattern))
    marker = tmp_path / "ran.txt"
    plant(target, marker)
    proc = run(single_command(cfg, "train.steps=3", "--resume", "auto"), expect=2)
    assert_refused(proc, target, marker)


def test_pickled_code_never_runs_in_checkpoint_universal(tmp_path, saved_run):
    _, tag_dir = _copy(saved_run, tmp_path)
    target = next(tag_dir.glob("*optim_states.pt"))
    marker = tmp_path / "ran.txt"
    plant(target, marker)
    proc = run([sys.executable, "-m", "modtrain", "checkpoint", "universal",
                str(tag_dir.parent)], expect=2)
    assert_refused(proc, target, marker)
    assert not (tag_dir.parent / save_load.universal_tag(TAG, False)).exists()


def test_pickled_code_in_a_universal_copy_never_runs_on_a_layout_changing_resume(
    tmp_path, saved_run
):
    """The run resumes on another layout (the checkpoint says data-parallel 2), loading a
    universal copy converted earlier, in which one parameter's file carries the payload:
    DeepSpeed's universal loader reads it past its checkpoint engine."""
    cfg, tag_dir = _copy(saved_run, tmp_path)
    state = json.loads((tag_dir / "modtrain.json").read_text())
    state["layout"]["data"] = 2
    (tag_dir / "modtrain.json").write_text(json.dumps(state))
    write_manifest(tag_dir, checksums(tag_dir, tag_files(tag_dir)))
    copy = universal.write_universal(tag_dir.parent, TAG, pipeline=False)
    target = copy / "zero" / "final_norm.weight" / "fp32.pt"
    marker = tmp_path / "ran.txt"
    state = torch.load(target, weights_only=False)
    state["extra"] = Payload(marker)
    torch.save(state, target)
    proc = run(single_command(cfg, "train.steps=3", "--resume", "auto"), expect=2)
    assert_refused(proc, target, marker)


def test_weights_only_loads_refuse_deepspeed_engine_loads(tmp_path):
    """DeepSpeed's own checkpoint engine passes weights_only=False; inside the context its
    load is weights-only all the same."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "ran.txt"
    torch.save({"w": torch.ones(2), "extra": Payload(marker)}, tmp_path / "bad.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    with save_load.weights_only_loads():
        assert torch.equal(TorchCheckpointEngine().load(str(tmp_path / "good.pt"))["w"],
                           torch.ones(2))
        with pytest.raises(ModtrainError, match="will not unpickle"):
            TorchCheckpointEngine().load(str(tmp_path / "bad.pt"))
    assert not marker.exists()
    assert torch.load is torch.serialization.load  # restored


def _globals(files) -> set[str]:
    return {g for f in files for g in torch.serialization.get_unsafe_globals_in_checkpoint(f)}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_allow_list_covers_what_deepspeed_pickles(tmp_path, dist, char_store, char_tokenizer,
                                                  stage):
    """Every global in a real checkpoint of each ZeRO stage is on the allow-list, and the
    recovery scripts DeepSpeed copies in are left out."""
    engine, state = _engine(tmp_path, char_store, char_tokenizer, f"train.zero_stage={stage}")
    root = tmp_path / "ckpt"
    tag = save_load.save(engine, root, replace(state, step=1))
    assert _globals((root / tag).glob("*.pt")) <= set(DEEPSPEED_GLOBALS)
    assert not any((root / tag / script).exists() for script in RECOVERY_SCRIPTS)


def test_allow_list_covers_universal_copies(tmp_path, saved_run):
    _, tag_dir = _copy(saved_run, tmp_path)
    copy = universal.write_universal(tag_dir.parent, TAG, pipeline=False)
    found = _globals(copy.glob("**/*.pt"))
    assert found and found <= set(DEEPSPEED_GLOBALS)


def test_checkpoint_universal_refuses_a_damaged_tag(tmp_path, saved_run):
    _, tag_dir = _copy(saved_run, tmp_path)
    target = next(tag_dir.glob("*optim_states.pt"))
    target.write_bytes(target.read_bytes()[:1000])  # a copy cut short
    proc = run([sys.executable, "-m", "modtrain", "checkpoint", "universal",
                str(tag_dir.parent)], expect=2)
    assert proc.stderr.strip().splitlines() == [
        f"modtrain: error: {tag_dir} is damaged ({target.name} has 1000 bytes, "
        f"{(saved_run / 'run' / 'checkpoints' / TAG / target.name).stat().st_size} were saved); "
        "restore the file, or pass --tag with an older checkpoint that verifies"]
    assert not (tag_dir.parent / save_load.universal_tag(TAG, False)).exists()
