"""Saving and resuming through DeepSpeed's sharded checkpoints.

Each checkpoint is a tag directory under RUN/checkpoints/ holding DeepSpeed's model and
(ZeRO-sharded) optimizer states; `latest` names the newest tag. modtrain's own state
(step, data loader position, resolved config) travels as DeepSpeed client state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    pointer = Path(checkpoint_dir) / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def save(engine, checkpoint_dir: str | Path, step: int, client_state: dict[str, Any]) -> str:
    tag = tag_for(step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state)
    return tag


def load(engine, checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """Load the latest checkpoint into `engine`; returns its client state, or None."""
    if latest_tag(checkpoint_dir) is None:
        return None
    path, client_state = engine.load_checkpoint(str(checkpoint_dir))
    return client_state if path is not None else None
