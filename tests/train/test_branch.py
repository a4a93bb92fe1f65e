"""A WSD anneal branch (run.init_from) from a stable-phase checkpoint: the same losses as a run
that decayed there without stopping."""

from __future__ import annotations

import json

import pytest

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.train.branch import start_from
from tests.train.helpers import run, single_command, step_losses, tiny_config

WSD = ["train.schedule=wsd", "train.decay_shape=1-sqrt", "train.save_interval=8",
       "train.keep_last=0"]


def _lrs(run_dir) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["lr"] for r in map(json.loads, lines) if "lr" in r}


@pytest.mark.slow
def test_anneal_branch_matches_the_uninterrupted_decay(tmp_path, char_store, char_tokenizer):
    def cfg(name):
        return tiny_config(tmp_path, char_store, char_tokenizer, name)

    run(single_command(cfg("stable"), *WSD, "train.steps=40"))  # decays from step 32
    run(single_command(cfg("ref"), *WSD, "train.steps=24", "train.decay_start=16"))
    source = tmp_path / "stable" / "checkpoints" / "step_00000016"
    before = {p.name: p.stat().st_size for p in source.iterdir()}
    proc = run(single_command(cfg("stable"), *WSD, "--resume", "auto", "train.steps=24",
                              "train.decay_start=16", f"run.dir={tmp_path / 'branch'}",
                              f"run.init_from={source}"))
    assert "resumed from step 16" in proc.stderr
    ref, stable, branch = (step_losses(tmp_path / n) for n in ("ref", "stable", "branch"))
    assert {s: stable[s] for s in range(1, 17)} == {s: ref[s] for s in range(1, 17)}
    assert sorted(branch) == list(range(17, 25))
    assert branch == {s: ref[s] for s in range(17, 25)}  # bitwise: every float equal
    lrs = _lrs(tmp_path / "branch")
    assert lrs == {s: _lrs(tmp_path / "ref")[s] for s in range(17, 25)} and lrs[24] < lrs[17]
    assert {p.name: p.stat().st_size for p in source.iterdir()} == before  # source kept
    # A branch that would rewrite the steps already trained is refused before any file moves.
    bad = run(single_command(cfg("stable"), *WSD, "--resume", "auto", "train.steps=24",
                             "train.decay_start=12", f"run.dir={tmp_path / 'bad'}",
                             f"run.init_from={source}"), expect=2)
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "modtrain: error: the checkpoint of step 16 was trained with another learning-rate")
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_init_from_names_what_it_takes(tmp_path, char_store, char_tokenizer):
    config = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "b"),
                         ["run.resume=auto", f"run.init_from={tmp_path / 'nothing'}"])
    with pytest.raises(Exception, match="is not a complete modtrain checkpoint; give"):
        start_from(config)
    config.run.resume = "none"
    with pytest.raises(Exception, match="pass --resume auto"):
        start_from(config)


def test_train_itself_checks_and_links_the_branch(tmp_path, char_store, char_tokenizer):
    """preflight, which train() runs when its caller did not, links run.init_from and
    checks the schedule: a program calling train() gets what `modtrain train` does."""
    from modtrain.config import config_to_dict
    from modtrain.train.trainer import preflight

    base = tiny_config(tmp_path, char_store, char_tokenizer, "a")
    saved = tmp_path / "a" / "checkpoints"
    (saved / "step_00000004").mkdir(parents=True)
    (saved / "step_00000004" / "modtrain.json").write_text(json.dumps(
        {"step": 4, "config": config_to_dict(load_config(base))}))
    (saved / "latest").write_text("step_00000004")
    config = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "b"),
                         ["run.resume=auto", f"run.init_from={saved}"])
    changed = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "c"),
                          ["run.resume=auto", f"run.init_from={saved}",
                           f"train.warmup_steps={config.train.warmup_steps + 1}"])
    with pytest.raises(ModtrainError, match="was trained with another learning-rate"):
        preflight(changed, overwrite=False)
    assert not (tmp_path / "c" / "checkpoints").exists()  # nothing linked in
    preflight(config, overwrite=False)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step_00000004"
