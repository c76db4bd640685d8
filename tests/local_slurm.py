"""A private one-node Slurm (munged, slurmctld, slurmd) on this host, for tests that submit real jobs.

Everything lives in one directory: its own munge key and socket, its own
slurm.conf (found through `SLURM_CONF`), spool and state directories, and
the daemons' logs. Nothing in /etc is changed, and `stop()` ends every
daemon it started. Needs root and Debian's `slurm-wlm` and `munge` packages;
`missing()` says what is absent, so tests can skip with one line.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sacct", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/usr/bin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if Path(f"{d}/{name}").exists()), None)


def missing() -> str | None:
    """Why a local Slurm cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd runs jobs as their user)"
    absent = [name for name in BINARIES if _which(name) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


SLURM_CONF = """\
ClusterName=fmnisttest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it starts again
# (120 s by default); a short one lets the requeue tests run in seconds.
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
# Jobs' ports derive from their ids (pipeline/cluster/environment.py): a
# random first id keeps two test clusters on one host (two test workers) apart.
FirstJobId={first_job_id}
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
PlugStackConfig={root}/plugstack.conf
KillWait=30
InactiveLimit=0
MinJobAge=600
SchedulerParameters=defer_batch
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class LocalSlurm:
    """A running one-node Slurm; use as a context manager, or `start()` and `stop()`."""

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname()
        self.processes: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.root / "slurm.conf"))

    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.root / "plugstack.conf").write_text("")
        ctld_port, slurmd_port = _free_ports(2)
        (self.root / "slurm.conf").write_text(
            SLURM_CONF.format(
                host=self.host,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                munge_socket=self.root / "munge" / "munge.socket",
                root=self.root,
                cpus=self.cpus,
                first_job_id=random.randrange(1000, 60000),
            )
        )

    def start(self, timeout: float = 60.0) -> LocalSlurm:
        """Starts munged, slurmctld and slurmd, and waits until the node takes jobs."""
        self._write_config()
        munge = self.root / "munge"
        subprocess.run(
            [
                _which("munged"),
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={munge / 'munge.key'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.root / f"{daemon}.out", "wb")  # noqa: SIM115 - closed with the process.
            self.processes.append(
                subprocess.Popen(
                    [_which(daemon), "-D", "-f", self.env["SLURM_CONF"]], env=self.env, stdout=log, stderr=log
                )
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return self
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.5)
        logs = "\n".join(self.log_tail(name) for name in ("slurmctld.out", "slurmd.out", "slurmctld.log", "slurmd.log"))
        self.stop()
        raise RuntimeError(f"local Slurm did not come up:\n{logs}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / name
        return (
            f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
        )

    def diagnosis(self, job_id: int) -> str:
        """What Slurm says about a job and the tails of its daemons' logs, for a failure message."""
        job = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        logs = "\n".join(self.log_tail(name, 40) for name in ("slurmctld.log", "slurmd.log"))
        return f"--- scontrol show job {job_id}\n{job}\n{logs}"

    def run(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs a Slurm client command against this cluster."""
        return subprocess.run([_which(command), *args], env=self.env, capture_output=True, text=True, check=check)

    def submit(
        self, options: list[str], script: str | Path | None = None, *args: str, env: dict | None = None, cwd=None
    ) -> int:
        """`sbatch --parsable OPTIONS SCRIPT ARGS`; returns the job id."""
        out = subprocess.run(
            [_which("sbatch"), "--parsable", *options, *([str(script)] if script else []), *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip().split(";")[0])

    def state(self, job_id: int | str) -> str:
        """The job's state as scontrol reports it (PENDING, RUNNING, COMPLETED, ...)."""
        out = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait(
        self, job_id: int | str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), timeout=600.0
    ):
        """Waits until the job is in one of `states`; returns the state."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            current = self.state(job_id)
            if current in states:
                return current
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} still {self.state(job_id)} after {timeout:.0f} s")

    def stop(self) -> None:
        """Ends every job and daemon this cluster started."""
        self.run("scancel", "--full", "--user=root", check=False) if self.processes else None
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        pid_file = self.root / "munge" / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
