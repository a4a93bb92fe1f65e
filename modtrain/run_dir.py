"""The run directory's layout: what training writes and what conversion, inspection and
job status read (a checkpoint's own layout: checkpoint/format.py).

RUN_DIR/
  config.yaml              the resolved config
  metrics.jsonl            one JSON object per logged step (and per evaluation)
  tensorboard/             TensorBoard event files
  checkpoints/
    step_00001000/         one complete checkpoint, `latest`: checkpoint/format.py
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
LOG_DIR = "logs"
JOBS_FILE = "jobs.jsonl"  # in LOG_DIR


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
