"""A run that starts from another run's checkpoint (run.init_from): its files linked into the
new run directory, so --resume auto continues from them there, and the schedule checked."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from modtrain.checkpoint.format import LATEST, STATE_FILE
from modtrain.checkpoint.tags import complete_tags, latest_tag, read_state
from modtrain.config import Config, config_from_dict
from modtrain.errors import ModtrainError
from modtrain.run_dir import CHECKPOINTS
from modtrain.train.schedule import check_continues


def _source(init_from: str) -> tuple[Path, str]:
    """(checkpoints directory, tag) that run.init_from names: a tag, or a directory's latest."""
    path = Path(init_from)
    if (path / STATE_FILE).is_file():
        return path.parent, path.name
    for root in (path, path / CHECKPOINTS):
        tag = latest_tag(root)
        if tag and (root / tag / STATE_FILE).is_file():
            return root, tag
    raise ModtrainError(
        f"run.init_from={init_from} is not a complete modtrain checkpoint; give "
        "RUN_DIR/checkpoints/step_NNNNNNNN, or RUN_DIR/checkpoints for its latest")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no copy of the weights; a saved file is never written again
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _resumed(config: Config) -> tuple[Path, str] | None:
    """The checkpoint --resume auto will continue: run.dir's latest, else run.init_from's."""
    own = Path(config.run.dir) / CHECKPOINTS
    if config.run.resume != "auto":
        return None
    if complete_tags(own):
        tag = latest_tag(own)
        return (own, tag) if tag and (own / tag / STATE_FILE).is_file() else None
    return _source(config.run.init_from) if config.run.init_from else None


def check_schedule(config: Config) -> None:
    """The learning rate over the steps the resumed checkpoint has made must not change."""
    found = _resumed(config)
    if found is not None:
        state = read_state(*found)
        check_continues(config_from_dict(state.config).train, config.train, state.step)


def start_from(config: Config) -> str | None:
    """Put run.init_from's checkpoint into run.dir/checkpoints when that holds none yet (a
    requeued branch resumes its own). Safe on every rank at once: the tag appears by one
    atomic rename. Returns the tag linked in, or None."""
    if not config.run.init_from:
        return None
    if config.run.resume != "auto":
        raise ModtrainError(f"run.init_from={config.run.init_from} continues a checkpoint; "
                            "pass --resume auto (or set run.resume=auto)")
    target = Path(config.run.dir) / CHECKPOINTS
    if complete_tags(target):
        return None
    root, tag = _source(config.run.init_from)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".init-{tag}-{uuid.uuid4().hex}"
    shutil.copytree(root / tag, tmp, copy_function=_link_or_copy)
    try:
        os.rename(tmp, target / tag)
    except OSError:  # another rank was first
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = target / f".{LATEST}-{uuid.uuid4().hex}"
    pointer.write_text(tag)
    os.replace(pointer, target / LATEST)
    return tag
