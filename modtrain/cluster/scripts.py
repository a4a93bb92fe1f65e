"""Slurm job scripts from Jinja2 templates: every value shell-quoted, every #SBATCH value one
safe word. One template per job kind renders both the shipped `slurm/KIND.sbatch` (generic:
arguments and environment at submission) and the scripts `modtrain submit` writes (values
baked in).

    python -m modtrain.cluster.scripts slurm/     # rewrite the shipped scripts
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from modtrain.errors import ModtrainError

KINDS = ("train", "tokenizer", "prepare_data", "convert")
BANNER = {
    "train": "# modtrain training: multi-node, one task per GPU (LAUNCH=torchrun: one per\n"
             "# node), requeued after the pre-timeout signal, resumed from the latest checkpoint.",
    "tokenizer": "# modtrain tokenizer training: one task, all of its cores (sampled sentences).",
    "prepare_data": "# modtrain data preparation: one MPI rank per task (srun --mpi=pmix, mpi4py).",
    "convert": "# modtrain convert: a run's latest checkpoint to a Hugging Face export.\n"
               "# It streams the weights: memory 2 GiB + the fp32 weights + 4x the largest\n"
               "# tensor (sbatch --mem=...; modtrain submit --pipeline sets it, model/cost.py).",
}
# Characters a #SBATCH value may not hold: sbatch splits these lines on whitespace and reads
# quotes and backslashes itself, and a newline would end the comment and start a command.
_UNSAFE_SBATCH = re.compile(r"[\s'\"\\`#]|[\x00-\x1f\x7f]")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


@dataclass
class JobScript:
    """One job script: its kind, #SBATCH options, and the values its body reads."""

    kind: str
    sbatch: list[str] = field(default_factory=list)  # "--nodes=2", "--requeue", ...
    values: dict[str, str] = field(default_factory=dict)  # shell variable -> literal value
    args: list[str] = field(default_factory=list)  # the command's arguments (train: CONFIG ...)


def sbatch_option(name: str, value: str | int | None = None) -> str:
    """`--name=value` for an #SBATCH line; a value that is not one safe word is an error."""
    if value is None:
        return f"--{name}"
    text = str(value)
    if not text or _UNSAFE_SBATCH.search(text):
        raise ModtrainError(f"--{name} {text!r} is not one word for #SBATCH (no spaces, quotes, "
                            "backslashes, '#' or control characters); pass the plain value")
    return f"--{name}={text}"


def time_seconds(value: str) -> int:
    """Seconds of a Slurm time limit (MINUTES, HH:MM:SS, D-HH:MM:SS, ...)."""
    if not _TIME.match(value):
        raise ModtrainError(f"--time {value!r} is not a Slurm time limit; use HH:MM:SS, "
                            "D-HH:MM:SS or MINUTES")
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:  # MINUTES, or HOURS with a day part
        seconds = parts[0] * (3600 if days else 60)
    elif len(parts) == 2:  # MM:SS, or HH:MM with a day part
        seconds = parts[0] * 3600 + parts[1] * 60 if days else parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds + int(days or 0) * 86400


def job_name(text: str) -> str:
    """A Slurm job name from free text: letters, digits, '.', '_', '-' (others become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "modtrain"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("modtrain.cluster", "templates"),
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=False, lstrip_blocks=False)
    env.filters["q"] = shlex.quote
    return env


GENERIC = {
    # Shell defaults for the shipped scripts: overridable from the submitting environment.
    "common": {"WORKDIR": '"${SLURM_SUBMIT_DIR:-$PWD}"', "PYTHON": '"${PYTHON:-python3}"',
               "LOG_DIR": '"${LOG_DIR:-logs/slurm}"'},
    "train": {"LAUNCH": '"${LAUNCH:-srun}"',
              "GPUS_PER_NODE": '"${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"',
              "MAX_RESTARTS": '"${MAX_RESTARTS:-50}"'},
}
GENERIC_SBATCH = {
    "train": ["--job-name=modtrain-train", "--nodes=2", "--ntasks-per-node=8",
              "--gpus-per-node=8", "--cpus-per-task=8", "--time=24:00:00", "--requeue",
              "--signal=B:USR1@600", "--open-mode=append", "--output=slurm-%x-%j.out"],
    "tokenizer": ["--job-name=modtrain-tokenizer", "--nodes=1", "--ntasks=1",
                  "--cpus-per-task=32", "--mem=64G", "--time=04:00:00",
                  "--output=slurm-%x-%j.out"],
    "prepare_data": ["--job-name=modtrain-prepare", "--nodes=2", "--ntasks-per-node=16",
                     "--cpus-per-task=1", "--time=04:00:00", "--output=slurm-%x-%j.out"],
    "convert": ["--job-name=modtrain-convert", "--nodes=1", "--ntasks=1", "--cpus-per-task=8",
                "--time=01:00:00", "--output=slurm-%x-%j.out"],
}
USAGE = {"train": "CONFIG [key=value ...]",
         "tokenizer": "modtrain tokenizer train ARGS... (e.g. --spec tokenizer/bpe_32k_web.yaml)",
         "prepare_data": "--tokenizer M --input FILES... --out STORE.zarr",
         "convert": "RUN_DIR --out EXPORT_DIR"}


def render(script: JobScript) -> str:
    """The job script text (values baked in, each shell-quoted)."""
    if script.kind not in KINDS:
        raise ValueError(script.kind)
    return _environment().get_template(f"{script.kind}.sbatch.j2").render(
        generic=False, banner=BANNER[script.kind], kind=script.kind,
        sbatch=script.sbatch, values=list(script.values.items()), args=script.args,
        script_path="", usage="")


def render_generic(kind: str) -> str:
    """The shipped slurm/KIND.sbatch: arguments and environment come at submission."""
    values = {**GENERIC["common"], **GENERIC.get(kind, {})}
    env = _environment()
    env.filters["q"] = lambda value: value  # the generic values are shell defaults, not data
    return env.get_template(f"{kind}.sbatch.j2").render(
        generic=True, banner=BANNER[kind], kind=kind, sbatch=GENERIC_SBATCH[kind],
        values=list(values.items()), args=[],
        script_path=f"slurm/{kind}.sbatch", usage=USAGE[kind])


def write_generic(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = folder / f"{kind}.sbatch"
        path.write_text(render_generic(kind))
        path.chmod(0o755)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_generic(Path(sys.argv[1] if len(sys.argv) > 1 else "slurm")):
        print(written)
