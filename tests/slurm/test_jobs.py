"""Jobs from `modtrain submit` on the real two-node test cluster: a training job, the
pre-timeout signal -> save -> requeue -> resume cycle, and the tokenizer -> prepare -> train
-> convert chain. Timings are printed (pytest -s) and asserted loosely."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import zarr

from modtrain.checkpoint.tags import latest_tag, read_state
from tests.slurm.test_launchers import launcher_env
from tests.train.helpers import step_losses, tiny_config

ROOT = Path(__file__).resolve().parents[2]
# Long enough that the pre-timeout signal (5-30 s after start, by Slurm's periodic check)
# comes well before the end on a fast, idle machine too (about 30 steps/s there: 150 steps
# ended before the signal once, 1000 got it at step 635).
STEPS = 2000
TIMINGS: dict[str, float] = {}


def submit(slurm, cwd: Path, *args: str) -> dict[str, str]:
    env = slurm.env(launcher_env())
    env.pop("MASTER_ADDR")  # the job script derives it from the first node, as on a cluster
    proc = subprocess.run([sys.executable, "-m", "modtrain", "submit", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(re.findall(r"submitted (\w+) job (\d+)", proc.stdout))
    assert jobs and "; log " in proc.stdout, proc.stdout
    return jobs


def wall_seconds(slurm, job: str) -> float:
    start, end = (datetime.fromisoformat(slurm.job_field(job, k)) for k in ("StartTime",
                                                                            "EndTime"))
    return (end - start).total_seconds()


def job_config(tmp_path, store, tokenizer, run: str, extra: str = "") -> Path:
    return tiny_config(tmp_path, store, tokenizer, run, micro=4, steps=STEPS, extra=extra)


def status(slurm, run_dir: Path) -> str:
    return subprocess.run([sys.executable, "-m", "modtrain", "status", str(run_dir)],
                          env=slurm.env(launcher_env()), capture_output=True, text=True,
                          timeout=60, check=True).stdout


@pytest.fixture(scope="module")
def two_node_run(slurm, tmp_path_factory, char_store, char_tokenizer):
    """One uninterrupted 2-node job (one task per node): the reference for the requeue test."""
    tmp = tmp_path_factory.mktemp("job")
    cfg = job_config(tmp, char_store, char_tokenizer, "twonode")
    jobs = submit(slurm, tmp, str(cfg), "--nodes", "2", "--gpus-per-node", "1", "--cpu",
                  "--time", "00:30:00")
    state = slurm.wait(jobs["train"], timeout=1800)
    run_dir = tmp / "twonode"
    log = (run_dir / "logs" / f"train-{jobs['train']}.0.log").read_text()
    assert state == "COMPLETED", log[-3000:]
    TIMINGS["2-node training job wall time"] = wall_seconds(slurm, jobs["train"])
    return run_dir, jobs["train"], log


@pytest.mark.slow
def test_two_node_training_job(slurm, two_node_run):
    run_dir, job, log = two_node_run
    assert "world size 2 (slurm)" in log and "2 node(s)" in log
    assert sorted(step_losses(run_dir)) == list(range(1, STEPS + 1))
    root = run_dir / "checkpoints"
    assert read_state(root, latest_tag(root)).step == STEPS
    text = status(slurm, run_dir)
    assert f"job {job} train: COMPLETED, 0 restart(s)" in text
    assert f"training: step {STEPS}/{STEPS}, loss " in text
    # On CPU the ranks build no DeepSpeed op, so no job waits on a compiler.
    assert not slurm.extensions.exists() or not any(slurm.extensions.iterdir())
    print(f"\nSlurm start {slurm.start_seconds:.2f} s; "
          + "; ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


@pytest.mark.slow
def test_time_limit_signal_saves_requeues_and_resumes(slurm, tmp_path, char_store,
                                                      char_tokenizer, two_node_run):
    cfg = job_config(tmp_path, char_store, char_tokenizer, "preempt")
    # A 1-minute limit and the signal 59 s before it: the first start is told to stop at once
    # (the signal is held until training runs, then it saves at the next step).
    jobs = submit(slurm, tmp_path, str(cfg), "--nodes", "2", "--gpus-per-node", "1", "--cpu",
                  "--time", "1", "--signal-seconds", "59")
    job = jobs["train"]
    deadline = time.monotonic() + 300
    while int(slurm.job_field(job, "Restarts") or 0) < 1:
        assert slurm.state(job) not in slurm_finished(), slurm.logs()
        assert time.monotonic() < deadline, "the job was not requeued"
        time.sleep(0.5)
    # The test's device: the resumed start gets time to finish (a real run just restarts
    # as often as it needs; each start makes progress).
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=00:30:00"],
                   env=slurm.env(), check=True, timeout=60)
    state = slurm.wait(job, timeout=1800)
    run_dir = tmp_path / "preempt"
    first = (run_dir / "logs" / f"train-{job}.0.log").read_text()
    second = (run_dir / "logs" / f"train-{job}.1.log").read_text()
    assert state == "COMPLETED", second[-3000:]
    assert "USR1: training saves and stops" in first and "exit 75" in first
    assert "stopped by signal at step" in first and "requeueing job" in first
    saved = int(re.search(r"stopped by signal at step (\d+)", first).group(1))
    assert 0 < saved < STEPS
    assert f"resumed from step {saved}" in second and "world size 2 (slurm)" in second

    reference = step_losses(two_node_run[0])
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    diffs = [abs(losses[s] - reference[s]) for s in reference]
    assert max(diffs) < 1e-6, f"resumed run differs from the uninterrupted one: {max(diffs)}"
    requeued = _stamp(first, "requeueing job")
    resumed = _stamp(second, "restart 1")
    TIMINGS["requeue to resumed start"] = (resumed - requeued).total_seconds()
    TIMINGS["preempted job, resumed start"] = wall_seconds(slurm, job)
    end = datetime.fromisoformat(slurm.job_field(job, "EndTime"))
    TIMINGS["preempted job, first start to end"] = (
        end - _stamp(first, "restart 0").replace(tzinfo=None)).total_seconds()
    assert f"job {job} train: COMPLETED, 1 restart(s)" in status(slurm, run_dir)
    print(f"\nsaved at step {saved}; " + "; ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


def slurm_finished() -> set[str]:
    from tests.slurm.cluster import FINISHED

    return FINISHED


def _stamp(log: str, marker: str) -> datetime:
    line = next(x for x in log.splitlines() if marker in x)
    return datetime.fromisoformat(line[1:line.index("]")])


@pytest.mark.slow
def test_pipeline_tokenizer_prepare_train_convert(slurm, tmp_path, corpus):
    parts = tmp_path / "corpus"
    parts.mkdir()
    text = corpus.read_text()
    for i in range(4):  # several inputs, so both MPI ranks get work
        (parts / f"part{i}.txt").write_text(text[i * len(text) // 4:(i + 1) * len(text) // 4])
    cfg = tiny_config(tmp_path, tmp_path / "store.zarr", tmp_path / "tok.model", "pipe",
                      micro=4, steps=10)
    export = tmp_path / "export"
    t0 = time.monotonic()
    jobs = submit(slurm, tmp_path, str(cfg), "--pipeline", "--corpus", str(parts),
                  "--tokenizer-spec", str(ROOT / "tokenizer" / "char.yaml"),
                  "--prepare-tasks", "2", "--export", str(export),
                  "--nodes", "2", "--gpus-per-node", "1", "--cpu", "--launch", "torchrun",
                  "--time", "00:10:00")
    assert list(jobs) == ["tokenizer", "prepare_data", "train", "convert"]
    assert slurm.job_field(jobs["train"], "Dependency") in (
        f"afterok:{jobs['prepare_data']}(unfulfilled)", "(null)")
    for kind, job in jobs.items():
        state = slurm.wait(job, timeout=600)
        log = tmp_path / "pipe" / "logs" / f"{kind}-{job}.0.log"
        assert state == "COMPLETED", (log.read_text() if log.exists() else slurm.logs())[-3000:]
        TIMINGS[f"pipeline {kind} job"] = wall_seconds(slurm, job)
    TIMINGS["pipeline end to end"] = time.monotonic() - t0
    train_log = (tmp_path / "pipe" / "logs" / f"train-{jobs['train']}.0.log").read_text()
    assert "world size 2 (torchrun)" in train_log and "launch torchrun" in train_log

    # The 2-rank store equals the one a single process builds from the same inputs.
    one = tmp_path / "one.zarr"
    subprocess.run([sys.executable, "-m", "modtrain", "data", "prepare", "--tokenizer",
                    str(tmp_path / "tok.model"), "--input", str(parts), "--out", str(one),
                    "--quiet"], env=launcher_env(), check=True, capture_output=True, timeout=300)
    a = zarr.open_group(tmp_path / "store.zarr", mode="r", zarr_format=3)
    b = zarr.open_group(one, mode="r", zarr_format=3)
    for name in ("tokens", "doc_offsets"):
        assert np.array_equal(a[name][:], b[name][:])
    assert dict(a.attrs) == dict(b.attrs)
    prepare_log = (tmp_path / "pipe" / "logs" / f"prepare_data-{jobs['prepare_data']}.0.log")
    assert "wrote " in prepare_log.read_text()

    sample = subprocess.run([sys.executable, "-m", "modtrain", "generate", str(export),
                             "--prompt", "ROMEO:", "--max-new-tokens", "20"],
                            env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout) >= 20
    print("\n" + "; ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
