"""`modtrain submit --dry-run`: valid bash, every hostile value literal, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from modtrain.cli import main
from modtrain.cluster.scripts import KINDS, render_generic

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ["$(touch {p}/cmd)", "`touch {p}/tick`", "a'b\"c", "x; touch {p}/semi", "two\nlines",
           "${{HOME}}", "back\\slash", "%j %x", "-n", "*"]


@pytest.fixture
def submit(capsys, monkeypatch):
    """`modtrain submit ARGS` in this process (from the repository root)."""
    monkeypatch.chdir(ROOT)

    def run(*args: str) -> SimpleNamespace:
        code = main(["submit", *args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def values_of(script: str) -> tuple[dict[str, str], list[str]]:
    """Run only the script's values block in bash and read back what each variable holds."""
    block = script.split("# --- values ---\n", 1)[1].split("# --- end values ---", 1)[0]
    names = [line.split("=", 1)[0] for line in block.splitlines()
             if "=" in line and not line.startswith(("ARGS=", " "))
             and line.split("=", 1)[0].isidentifier()]
    dump = "; ".join(f'printf "%s\\0" "${name}"' for name in names)
    proc = subprocess.run(["bash", "-c", f"set -u\n{block}\n{dump}; printf '%s\\0' "
                           '"${ARGS[@]}"'], capture_output=True, text=True, check=True)
    words = proc.stdout.split("\0")[:-1]
    return dict(zip(names, words[: len(names)])), words[len(names):]


def test_hostile_names_paths_and_overrides_stay_literal(tmp_path, submit):
    hostile = [h.format(p=tmp_path) for h in HOSTILE]
    run_dir = tmp_path / ("run " + hostile[0] + hostile[1] + hostile[2])
    overrides = [f"run.dir={run_dir}", f"data.store={hostile[3]}", f"data.tokenizer={hostile[4]}",
                 f"data.index_cache={hostile[5]}{hostile[6]}{hostile[7]}"]
    proc = submit("configs/shakespeare_mod.yaml", "--nodes", "2", "--gpus-per-node", "4",
                  "--time", "02:00:00", "--partition", "gpu", "--account", "proj-1",
                  "--qos", "high", "--constraint", "a100&ib", "--mail-user", "me@example.org",
                  "--dry-run", *overrides)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    values, args = values_of(script)
    assert args == [str(ROOT / "configs/shakespeare_mod.yaml"), *overrides]
    assert values["LOG_DIR"] == f"{run_dir}/logs"
    assert values["WORKDIR"] == str(ROOT) and values["PYTHON"] == sys.executable
    assert not list(tmp_path.iterdir()), "a hostile value ran or --dry-run wrote something"
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in header and "#SBATCH --gpus-per-node=4" in header
    assert "#SBATCH --constraint=a100&ib" in header and "#SBATCH --requeue" in header
    assert "#SBATCH --signal=B:USR1@300" in header
    name = next(line for line in header if "--job-name" in line)
    assert name.split("=", 1)[1].replace("_", "").replace("-", "").replace(".", "").isalnum()


@pytest.mark.parametrize("option, value", [("--partition", "gpu\ntouch /tmp/x"),
                                           ("--account", "a b"), ("--qos", "x'y"),
                                           ("--time", "2 hours")])
def test_unsafe_sbatch_values_are_one_line_errors(submit, option, value):
    proc = submit("configs/shakespeare_mod.yaml", option, value, "--dry-run")
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.startswith("modtrain: error: ") and proc.stderr.count("\n") == 1


def test_bad_override_fails_before_submission(submit):
    proc = submit("configs/shakespeare_mod.yaml", "--dry-run", "train.stepz=5")
    assert proc.returncode == 2 and "modtrain: error:" in proc.stderr
    assert "train.steps" in proc.stderr


def test_pipeline_dry_run_renders_four_jobs(tmp_path, submit):
    proc = submit("configs/shakespeare_mod.yaml", "--pipeline", "--corpus", "a.txt", "b c.txt",
                  "--tokenizer-type", "char", "--cpu", "--dry-run", f"run.dir={tmp_path}/r")
    assert proc.returncode == 0, proc.stderr
    scripts = proc.stdout.split("#!/bin/bash\n")[1:]
    assert len(scripts) == 4
    for text in scripts:
        assert subprocess.run(["bash", "-n"], input="#!/bin/bash\n" + text,
                              text=True).returncode == 0
    _, tok_args = values_of(scripts[0])
    assert tok_args == ["--type", "char", "--vocab-size", "8000", "--input", "a.txt", "b c.txt",
                        "--out", "data/shakespeare_char"]
    assert 'srun --mpi="${SRUN_MPI:-pmix}"' in scripts[1]
    assert "--dependency=afterok:" in proc.stderr and "--kill-on-invalid-dep=yes" in proc.stderr


def test_pipeline_convert_job_asks_for_memory_from_the_model_size(tmp_path, submit):
    from modtrain.config import load_config
    from modtrain.model.cost import convert_host_bytes

    wide = ["model.hidden_size=2048", "model.num_layers=8", "model.num_heads=16"]
    mems = []
    for overrides in ([], wide):
        proc = submit("configs/shakespeare_mod.yaml", "--pipeline", "--corpus", "a.txt",
                      "--vocab-size", "32000", "--cpu", "--dry-run", f"run.dir={tmp_path}/r",
                      *overrides)
        assert proc.returncode == 0, proc.stderr
        convert = proc.stdout.split("#!/bin/bash\n")[4]
        m = load_config("configs/shakespeare_mod.yaml", ["model.vocab_size=32000", *overrides])
        gib = -(-convert_host_bytes(m.model) // 2**30)
        assert f"#SBATCH --mem={gib}G\n" in convert
        mems.append(gib)
    assert mems[1] > mems[0]


def test_shipped_slurm_scripts_are_the_rendered_templates():
    for kind in KINDS:
        shipped = ROOT / "slurm" / f"{kind}.sbatch"
        assert shipped.read_text() == render_generic(kind), (
            f"{shipped} is stale: python -m modtrain.cluster.scripts slurm")
        assert subprocess.run(["bash", "-n", str(shipped)]).returncode == 0


def test_a_signal_as_long_as_the_time_limit_is_refused(submit):
    proc = submit("configs/shakespeare_mod.yaml", "--time", "00:05:00", "--dry-run")
    assert proc.returncode == 2
    assert "--signal-seconds 300 is not below --time 00:05:00 (300 s)" in proc.stderr
