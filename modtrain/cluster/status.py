"""`modtrain status RUN_DIR`: the run's Slurm jobs (state, restarts, logs) and its progress."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from modtrain.checkpoint.format import LATEST
from modtrain.checkpoint.tags import candidate_tags, latest_tag
from modtrain.config.load import read_yaml
from modtrain.errors import ModtrainError, shown
from modtrain.run_dir import (
    CHECKPOINTS,
    CONFIG_FILE,
    JOBS_FILE,
    LOG_DIR,
    METRICS_FILE,
    read_metrics,
)


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def job_state(job: str) -> dict[str, str]:
    """State and restarts from scontrol (live and recently ended jobs), else from sacct."""
    fields = dict(item.split("=", 1) for item in _run(
        ["scontrol", "show", "job", "-o", job]).split() if "=" in item)
    if "JobState" in fields:
        return {"state": fields["JobState"], "restarts": fields.get("Restarts", "0"),
                "reason": fields.get("Reason", "None"), "elapsed": fields.get("RunTime", "")}
    line = _run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State,Elapsed"]).strip()
    if line:
        state, _, elapsed = line.splitlines()[-1].partition("|")
        return {"state": state.split()[0], "restarts": "", "reason": "None", "elapsed": elapsed}
    return {"state": "UNKNOWN (no longer known to Slurm)", "restarts": "", "reason": "None",
            "elapsed": ""}


def last_metrics(run_dir: Path) -> tuple[dict | None, float | None]:
    """The last whole training record and the last val_loss in metrics.jsonl."""
    last, val = None, None
    for record in read_metrics(run_dir / METRICS_FILE):
        if "loss" in record:
            last = record
        if record.get("val_loss") is not None:
            val = record["val_loss"]
    return last, val


def planned_steps(config: Path) -> tuple[int | None, str | None]:
    """train.steps of the run's config.yaml, and what is wrong with the file if it cannot
    be read (a damaged config must not hide the jobs and the progress)."""
    if not config.is_file():
        return None, None
    try:
        data = read_yaml(config)
    except ModtrainError as e:
        return None, str(e)
    train = data.get("train") if isinstance(data, dict) else None
    steps = train.get("steps") if isinstance(train, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool):
        return None, f"{config} holds no integer train.steps; restore it from a copy"
    return steps, None


def checkpoint_line(checkpoint_dir: Path) -> str:
    """The tag a resume would try first (checkpoint.tags.candidate_tags: an empty or garbage
    `latest` hides no checkpoint), and what is odd about `latest`."""
    tags = candidate_tags(checkpoint_dir)
    try:
        named = latest_tag(checkpoint_dir)
    except (OSError, UnicodeDecodeError):
        named = "(unreadable)"
    if not tags:
        return "none"
    if (checkpoint_dir / LATEST).exists() and named != tags[0]:
        return (f"{tags[0]} (newest complete; {checkpoint_dir / LATEST} names "
                f"{shown(named)}, which is not a complete checkpoint)")
    return tags[0]


def status_lines(run_dir: Path) -> list[str]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModtrainError(f"{run_dir} is not a directory; pass the run directory (run.dir)")
    lines = [f"run {run_dir.absolute()}"]
    jobs_path = run_dir / LOG_DIR / JOBS_FILE
    jobs = ([json.loads(x) for x in jobs_path.read_text().splitlines() if x.strip()]
            if jobs_path.is_file() else [])
    if not jobs:
        lines.append("jobs: none submitted with `modtrain submit` for this run directory")
    for job in jobs:
        info = job_state(job["job"])
        logs = sorted((run_dir / LOG_DIR).glob(f"{job['kind']}-{job['job']}.*.log"),
                      key=lambda p: int(p.suffixes[-2].lstrip(".")))
        restarts = info["restarts"] or str(max(len(logs) - 1, 0))
        reason = f" ({info['reason']})" if info["reason"] not in ("None", "") else ""
        lines.append(f"job {job['job']} {job['kind']}: {info['state']}{reason}, "
                     f"{restarts} restart(s)"
                     + (f", elapsed {info['elapsed']}" if info["elapsed"] else "")
                     + (f", log {logs[-1]}" if logs else ""))
    last, val = last_metrics(run_dir)
    if last is None:
        lines.append("training: no step logged yet")
    else:
        steps, problem = planned_steps(run_dir / CONFIG_FILE)
        total = f"/{steps}" if steps else ""
        if problem:
            lines.append(f"config: {problem}")
        loss = last.get("loss")
        lines.append(f"training: step {last['step']}{total}, loss "
                     + (f"{loss:.4f}" if isinstance(loss, float) else str(loss))
                     + (f", val loss {val:.4f}" if val is not None else ""))
    lines.append(f"checkpoint: {checkpoint_line(run_dir / CHECKPOINTS)}")
    return lines
