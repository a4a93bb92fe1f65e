"""The run directory's layout: what training writes and what conversion, inspection and
job status read.

RUN_DIR/
  config.yaml              the resolved config
  metrics.jsonl            one JSON object per logged step (and per evaluation)
  tensorboard/             TensorBoard event files
  checkpoints/
    step_00001000/         one complete checkpoint (DeepSpeed's files + modtrain.json)
    latest                 the tag of the newest complete checkpoint
  logs/                    Slurm jobs: their scripts, slurm-JOBID.out, KIND-JOBID.RESTART.log
    jobs.jsonl             one line per submitted job
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LATEST = "latest"
STATE_FILE = "modtrain.json"  # in each tag: step, data-loader state, config, layout (JSON)
LOG_DIR = "logs"
JOBS_FILE = "jobs.jsonl"  # in LOG_DIR


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag `latest` names, or None before the first save."""
    pointer = Path(checkpoint_dir) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def read_state(checkpoint_dir: str | Path, tag: str) -> dict[str, Any]:
    """modtrain's own state of one checkpoint (JSON, no pickle)."""
    return json.loads((Path(checkpoint_dir) / tag / STATE_FILE).read_text())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file (whole JSON lines with a step); a last line that a kill
    cut short, or any line that is not JSON text, is skipped. An absent file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # also a line that is not UTF-8
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


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


def move_aside(path: Path) -> Path:
    """Rename `path` to PATH.old-<time> (never deleted; a run or a token store replaced by
    --overwrite); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
        n += 1
    path.rename(target)
    return target
