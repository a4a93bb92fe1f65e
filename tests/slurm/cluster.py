"""A real single-host Slurm for tests: munged, slurmctld and one slurmd per simulated node.

Everything lives under one directory (config, munge key and socket, state, spool, logs).
The daemons run in the foreground as children of the test process, so they are stopped by
their own process ids. Node names (n1, n2) do not resolve; each node's NodeAddr is
127.0.0.1, which is what modtrain's launcher and the sbatch scripts use as the address.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=modtrain-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also the delay before a requeued job may start again (default 120 s)
AuthInfo=socket={root}/munge/munge.socket.2,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# per node: the PMIx plugin makes $TmpFS/spmix_appdir_<uid>_<job>.<step>; two slurmds collide
TmpFS={root}/tmp/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
MpiDefault=none
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=600
Waittime=0
SlurmdTimeout=60
MailProg=/bin/true
"""


@dataclass
class LocalSlurm:
    """A cluster of `nodes` simulated nodes on loopback, rooted at `root`."""

    root: Path
    nodes: int = 2
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    start_seconds: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def extensions(self) -> Path:
        return self.root / "torch_extensions"

    @property
    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) pointed at this cluster. Jobs get a
        private DeepSpeed extension cache, which stays empty: on CPU modtrain builds no
        DeepSpeed op (parallel/distributed.py, skip_shm_comm_op)."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["TORCH_EXTENSIONS_DIR"] = str(self.extensions)
        return env

    def _daemon(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 (kept by the child)
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env())
        log.close()

    def start(self, timeout: float = 60) -> LocalSlurm:
        t0 = time.monotonic()
        for sub in ("etc", "munge", "state", "log", "run", "spool", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for node in self.node_names:
            (self.root / "spool" / node).mkdir(exist_ok=True)
            (self.root / "tmp" / node).mkdir(exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)  # munged: the socket dir must be world-executable
        key = self.root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True,
                       capture_output=True)
        key.chmod(0o600)
        sock = self.root / "munge" / "munge.socket.2"
        self._daemon("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={sock}",
                                f"--pid-file={self.root}/munge/munged.pid",
                                f"--seed-file={self.root}/munge/munged.seed",
                                f"--log-file={self.root}/munge/munged.log"])
        self._wait(lambda: sock.exists(), timeout, "munged did not create its socket")
        host = socket.gethostname().split(".")[0]
        text = SLURM_CONF.format(host=host, root=self.root, ctld_port=_free_port(),
                                 slurmd_port=_free_port())
        cpus = os.cpu_count() or 1
        for node in self.node_names:
            text += (f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 "
                     f"Port={_free_port()} CPUs={cpus} RealMemory=4000 State=UNKNOWN\n")
        text += "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        self.conf.write_text(text)
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: "UP" in self._out(["scontrol", "ping"]), timeout,
                   "slurmctld did not answer 'scontrol ping'")
        for node in self.node_names:
            self._daemon(f"slurmd-{node}", ["slurmd", "-D", "-f", str(self.conf), "-N", node])
        # Submitting before every node registered races the registration.
        self._wait(lambda: self._out(["sinfo", "-h", "-N", "-o", "%T"]).split().count("idle")
                   == self.nodes, timeout, "the nodes did not become idle")
        self.start_seconds = time.monotonic() - t0
        return self

    def _out(self, cmd: list[str]) -> str:
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True,
                              timeout=60).stdout

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s: {self.logs()}")
            time.sleep(0.1)

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (by their process ids), slurmd first."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env(),
                           capture_output=True, timeout=60)
            deadline = time.monotonic() + 30
            while self._out(["squeue", "-h"]).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        order = [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    # ---- jobs --------------------------------------------------------------------------
    def job_field(self, job: str, name: str) -> str | None:
        for item in self._out(["scontrol", "show", "job", "-o", job]).split():
            if item.startswith(f"{name}="):
                return item.split("=", 1)[1]
        return None

    def state(self, job: str) -> str | None:
        return self.job_field(job, "JobState")

    def wait(self, job: str, timeout: float = 600) -> str:
        """Wait until the job has finished for good (not requeued); its final state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(job)
            if state in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still {state} after {timeout:.0f} s:\n"
                                   f"{self.logs()}")
            time.sleep(0.5)
