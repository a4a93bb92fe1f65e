"""The tags of a checkpoint directory: which are complete, which `latest` names, their state."""

from __future__ import annotations

import json
from pathlib import Path

from modtrain.checkpoint.format import LATEST, STATE_FILE, CheckpointState, StateError


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag `latest` names, or None before the first save."""
    pointer = Path(checkpoint_dir) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def read_state(checkpoint_dir: str | Path, tag: str) -> CheckpointState:
    """modtrain's own state of one checkpoint (JSON, no pickle)."""
    path = Path(checkpoint_dir) / tag / STATE_FILE
    try:
        value = json.loads(path.read_text())
    except ValueError as e:  # also text that is not UTF-8
        raise StateError(f"{path} is not JSON ({str(e)[:120]}); the checkpoint is damaged, "
                            "resume from or convert an older tag") from None
    return CheckpointState.from_json(value, str(path))


def complete_tags(checkpoint_dir: str | Path) -> list[str]:
    """Tags of complete checkpoints (their state file written last), oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def candidate_tags(checkpoint_dir: str | Path) -> list[str]:
    """The complete tags to try, best first: the one `latest` names, then the older ones
    newest first. An empty, garbage or dangling `latest` hides none: then every complete tag,
    newest first. The one order resume and convert choose from (callers verify)."""
    complete = complete_tags(checkpoint_dir)
    try:
        latest = latest_tag(checkpoint_dir)
    except (OSError, UnicodeDecodeError):
        latest = None
    if latest not in complete:
        return complete[::-1]
    return [latest, *(t for t in reversed(complete) if t < latest)]
