"""`modtrain submit`: a config and resources to Slurm jobs (training, or the whole pipeline).

Values reach the job only as shell-quoted words (scripts.render) or as sbatch's own argv,
never through a shell string, so a run name or override holding `$(...)`, quotes or
newlines stays literal.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modtrain import log
from modtrain.cluster.scripts import JobScript, job_name, render, sbatch_option, time_seconds
from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.model.cost import convert_host_bytes
from modtrain.run_dir import JOBS_FILE, LOG_DIR


@dataclass
class Resources:
    """What `modtrain submit` asks Slurm for; None leaves Slurm's default."""

    nodes: int = 1
    gpus_per_node: int = 1
    time: str = "01:00:00"
    cpu: bool = False  # nodes without GPUs: tasks only, no GPU request
    launch: str = "srun"  # srun (a task per GPU) | torchrun (a task per node)
    cpus_per_task: int | None = None
    signal_seconds: int = 300
    max_restarts: int = 50
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    mail_user: str | None = None
    mail_type: str = "END,FAIL"
    exclusive: bool = False
    extra: list[str] = field(default_factory=list)  # raw `--opt=value` sbatch options


def _common(res: Resources, name: str) -> list[str]:
    time_seconds(res.time)  # a malformed limit is an error here, not a rejected job
    opts = [sbatch_option("job-name", job_name(name)), sbatch_option("time", res.time)]
    for key in ("partition", "account", "qos", "constraint", "reservation"):
        value = getattr(res, key)
        if value is not None:
            opts.append(sbatch_option(key, value))
    if res.mail_user is not None:
        opts += [sbatch_option("mail-user", res.mail_user),
                 sbatch_option("mail-type", res.mail_type)]
    for raw in res.extra:
        key, sep, value = raw.removeprefix("--").partition("=")
        opts.append(sbatch_option(key, value if sep else None))
    return opts


def train_resources(res: Resources) -> list[str]:
    if res.nodes < 1 or res.gpus_per_node < 1:
        raise ModtrainError("--nodes and --gpus-per-node must be at least 1")
    if res.signal_seconds < 10:
        raise ModtrainError("--signal-seconds must leave at least 10 s to save a checkpoint")
    limit = time_seconds(res.time)
    if res.signal_seconds >= limit:
        raise ModtrainError(
            f"--signal-seconds {res.signal_seconds} is not below --time {res.time} ({limit} s): "
            "every start would be told to stop at once; lower --signal-seconds or raise --time")
    per_node = 1 if res.launch == "torchrun" else res.gpus_per_node
    opts = [sbatch_option("nodes", res.nodes), sbatch_option("ntasks-per-node", per_node)]
    if not res.cpu:
        opts.append(sbatch_option("gpus-per-node", res.gpus_per_node))
    if res.cpus_per_task:
        opts.append(sbatch_option("cpus-per-task", res.cpus_per_task * (
            res.gpus_per_node if res.launch == "torchrun" else 1)))
    if res.exclusive:
        opts.append(sbatch_option("exclusive"))
    return opts + [sbatch_option("requeue"),
                   sbatch_option("signal", f"B:USR1@{res.signal_seconds}"),
                   sbatch_option("open-mode", "append")]


@dataclass
class Submission:
    """One job to submit: the script, where its logs go, and what it waits for."""

    kind: str
    script: JobScript
    log_dir: Path
    after: str | None = None  # the kind of the job this one waits for (afterok)


def _values(log_dir: Path, **extra: str) -> dict[str, str]:
    return {"WORKDIR": str(Path.cwd()), "PYTHON": sys.executable, "LOG_DIR": str(log_dir),
            **extra}


def plan_train(config_path: str, overrides: list[str], res: Resources) -> Submission:
    config = load_config(config_path, overrides)  # a bad key fails here, not in the queue
    if res.launch not in ("srun", "torchrun"):
        raise ModtrainError(f"--launch {res.launch!r}: choose srun or torchrun")
    run_dir = Path(config.run.dir).absolute()
    log_dir = run_dir / LOG_DIR
    script = JobScript(
        "train", _common(res, f"train-{run_dir.name}") + train_resources(res),
        _values(log_dir, LAUNCH=res.launch, GPUS_PER_NODE=str(res.gpus_per_node),
                MAX_RESTARTS=str(res.max_restarts)),
        [str(Path(config_path).absolute()), *overrides])
    return Submission("train", script, log_dir)


def convert_memory(config_model, vocab_size: int) -> str:
    """--mem of the convert job, from the model's size (model/cost.py); `vocab_size`: the
    tokenizer's, where model.vocab_size is left to the data store."""
    m = dataclasses.replace(config_model, vocab_size=config_model.vocab_size or vocab_size)
    return f"{-(-convert_host_bytes(m) // 2**30)}G"


def plan_pipeline(config_path: str, overrides: list[str], res: Resources, corpus: list[str],
                  tokenizer_args: list[str], prepare_tasks: int, export_dir: str | None,
                  vocab_size: int = 8000) -> list[Submission]:
    """tokenizer -> prepare (MPI ranks) -> train -> convert, each after the previous one.
    `vocab_size`: the tokenizer job's (sizes the convert job's memory)."""
    if not corpus:
        raise ModtrainError("--pipeline needs --corpus FILES (the text to tokenize)")
    config = load_config(config_path, overrides)
    train = plan_train(config_path, overrides, res)
    log_dir, run_dir = train.log_dir, train.log_dir.parent
    name = run_dir.name
    tokenizer = config.data.tokenizer
    if not tokenizer.endswith(".model"):
        raise ModtrainError(f"data.tokenizer {tokenizer!r} must end in .model for --pipeline "
                            "(the tokenizer job writes PREFIX.model)")
    export = export_dir or str(Path("exports") / name)
    one = [sbatch_option("nodes", 1), sbatch_option("ntasks", 1)]
    cpus = [sbatch_option("cpus-per-task", res.cpus_per_task)] if res.cpus_per_task else []
    return [
        Submission("tokenizer", JobScript(
            "tokenizer", _common(res, f"tokenizer-{name}") + one + cpus, _values(log_dir),
            [*tokenizer_args, "--input", *corpus, "--out", tokenizer.removesuffix(".model")]),
            log_dir),
        Submission("prepare_data", JobScript(
            "prepare_data", _common(res, f"prepare-{name}") + [
                sbatch_option("ntasks", prepare_tasks)], _values(log_dir),
            ["--tokenizer", tokenizer, "--input", *corpus, "--out", config.data.store,
             "--overwrite"]), log_dir, after="tokenizer"),
        Submission("train", train.script, log_dir, after="prepare_data"),
        Submission("convert", JobScript(
            "convert", _common(res, f"convert-{name}") + one + [
                sbatch_option("mem", convert_memory(config.model, vocab_size))],
            _values(log_dir),
            [str(run_dir), "--out", export]), log_dir, after="train"),
    ]


def sbatch_command(sub: Submission, script_path: Path, after_job: str | None) -> list[str]:
    # Slurm's own output file (before the script's redirect); % is its pattern character.
    output = str(sub.log_dir).replace("%", "%%") + "/slurm-%j.out"
    cmd = ["sbatch", "--parsable", f"--output={output}"]
    if after_job is not None:
        cmd += [f"--dependency=afterok:{after_job}", "--kill-on-invalid-dep=yes"]
    return [*cmd, str(script_path)]


def submit(subs: list[Submission], dry_run: bool = False) -> list[tuple[str, str]]:
    """Render, write and `sbatch` each job in order; (kind, job id) for each."""
    ids: dict[str, str] = {}
    out = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for sub in subs:
        text = render(sub.script)
        after = ids.get(sub.after) if sub.after else None
        script_path = sub.log_dir / f"{sub.kind}-{stamp}.sbatch"
        if dry_run:
            print(text, end="")
            cmd = sbatch_command(sub, script_path, "$PREVIOUS_JOB" if sub.after else None)
            log.note(f"modtrain: dry run, would write {script_path} and run: {shlex.join(cmd)}")
            continue
        sub.log_dir.mkdir(parents=True, exist_ok=True)
        script_path.write_text(text)
        script_path.chmod(0o755)
        try:
            proc = subprocess.run(sbatch_command(sub, script_path, after), capture_output=True,
                                  text=True, timeout=120)
        except FileNotFoundError:
            raise ModtrainError("sbatch is not on PATH; run `modtrain submit` on a Slurm login "
                                f"node, or submit {script_path} there with sbatch") from None
        if proc.returncode != 0:
            raise ModtrainError(f"sbatch refused the {sub.kind} job: "
                                f"{' '.join(proc.stderr.split())}; the script is {script_path}")
        job = proc.stdout.strip().split(";")[0]
        ids[sub.kind] = job
        out.append((sub.kind, job))
        with open(sub.log_dir / JOBS_FILE, "a") as f:
            f.write(json.dumps({"job": job, "kind": sub.kind, "script": str(script_path),
                                "after": after, "submitted": time.time()}) + "\n")
        print(f"submitted {sub.kind} job {job}"
              + (f" (after {sub.after} job {after})" if after else "")
              + f"; log {sub.log_dir}/{sub.kind}-{job}.<restart>.log")
    return out
