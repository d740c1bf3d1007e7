"""A real SLURM cluster on this machine for tests: slurmctld and two slurmd daemons, each slurmd a
node of 1 CPU reached at 127.0.0.1 on a port of its own, `auth/none` (no munge), every file in
one temporary folder. Needs SLURM's daemons and clients (Debian: slurmctld, slurmd,
slurm-client) and root (slurmd starts jobs as their user)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "sinfo")
NODES = ("node1", "node2")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says what is missing (the tests skip with it)."""


def missing_requirements() -> str | None:
    """What keeps a SLURM cluster from starting here, or None."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM is not installed: {', '.join(missing)} not on PATH "
            "(Debian/Ubuntu: apt-get install slurmctld slurmd slurm-client)"
        )
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; these tests run as a normal user"
    return None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def slurm_conf(root: Path, host: str, ports: list[int]) -> str:
    controller_port, *node_ports = ports
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=1 State=UNKNOWN"
        for name, port in zip(NODES, node_ports)
    )
    return f"""\
ClusterName=mrltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
{nodes}
PartitionName=test Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `submit` and `job` talk to it with its clients."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        # Every process of this cluster, daemons and jobs alike, carries this in its environment:
        # `stop()` finds what is left of them by it.
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def start(self, timeout: float = 60) -> None:
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(slurm_conf(self.root, host, free_ports(1 + len(NODES))))
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        for node in NODES:
            self._daemon(["slurmd", "-D", "-f", str(self.conf), "-N", node], f"slurmd-{node}.out")
        deadline = time.time() + timeout
        states = ""
        while time.time() < deadline:
            if any(daemon.poll() is not None for daemon in self.daemons):
                break
            states = self.node_states()
            if self._idle(states):
                return
            time.sleep(0.5)
        self.stop()
        raise SlurmUnavailable(f"SLURM did not start within {timeout:.0f} s (sinfo: {states.strip()!r}): {self.logs()}")

    def node_states(self) -> str:
        """sinfo's `NODE STATE` lines."""
        return self._run(["sinfo", "--noheader", "--Node", "--format=%N %t"], check=False).stdout

    @staticmethod
    def _idle(states: str) -> bool:
        return sorted(states.split()) == sorted([*NODES, *["idle"] * len(NODES)])

    def all_idle(self) -> bool:
        """Every node is idle: no job on it, none still completing."""
        return self._idle(self.node_states())

    def _daemon(self, command: list[str], log: str) -> None:
        with open(self.root / log, "w") as sink:
            self.daemons.append(
                subprocess.Popen(command, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def _run(
        self, command: list[str], check: bool = True, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        environment = {**self.env, **(env or {})}
        result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def logs(self) -> str:
        """The last lines of every daemon's log."""
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            lines = path.read_text(errors="replace").splitlines()[-8:]
            parts.append(f"{path.name}: " + " | ".join(lines))
        return "; ".join(parts)

    def submit(self, script: Path, options: list[str], arguments: list[str], cwd: Path, env: dict[str, str]) -> str:
        """`sbatch --parsable OPTIONS SCRIPT ARGUMENTS` from `cwd` with `env` added: the job id."""
        result = self._run(["sbatch", "--parsable", *options, str(script), *arguments], cwd=cwd, env=env)
        return result.stdout.strip().split(";")[0]

    def command(self, *args: str) -> str:
        """Run a SLURM client (`scontrol ...`, `scancel ...`) against this cluster: its output."""
        return self._run(list(args)).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as {field: value}: JobState, Restarts, ExitCode, ..."""
        return dict(re.findall(r"(\w+)=(\S*)", self.command("scontrol", "show", "job", "--oneliner", job_id)))

    def wait_for_job(self, job_id: str, done, timeout: float, what: str, log: Path | None = None) -> dict[str, str]:
        """Poll the job until `done(record)`; an AssertionError naming `what` after `timeout` s."""
        deadline = time.time() + timeout
        record: dict[str, str] = {}
        while time.time() < deadline:
            record = self.job(job_id)
            if done(record):
                return record
            time.sleep(0.5)
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise AssertionError(f"job {job_id}: {what} not within {timeout:.0f} s; {record}\n{tail}")

    def stop(self) -> None:
        """Stop the daemons, then whatever of this cluster still runs (job step daemons, jobs)."""
        for daemon in self.daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self.daemons = []
        marker = f"SLURM_CONF={self.conf}".encode()
        for _ in range(20):
            left = [pid for pid in pids_with_environment(marker) if pid != os.getpid()]
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)


def pids_with_environment(entry: bytes) -> list[int]:
    """Processes whose environment holds `entry` exactly (from /proc)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found
