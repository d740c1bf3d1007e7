"""Two "nodes" on this machine: two `accelerate launch` runs of the shipped multi-node launcher
config (only addresses and sizes overridden; the rendezvous flags its header comment gives on
the command line), one process each, c10d rendezvous on 127.0.0.1,
gloo. They train, validate on global rank 0 only, checkpoint once into the run folder both see,
stop on SIGTERM, resume; a node that never arrives, or dies mid-run, ends the other with a clear
error within the configured timeouts, not a hang. Slow: minutes on 2 cores."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.train import checkpointing as ckpt

from train_configs import read_metrics, tiny_config, write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT_S = 30
LONELY_JOIN_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prepare_demo_shards(
        tmp_path_factory.mktemp("multinode"), speakers=10, utterances=6, seed=10, shard_size_mb=1
    )


def launcher_config(tmp_path: Path, port: int) -> Path:
    """configs/accelerate/multi-node.yaml with this machine's address and sizes: 2 x 1 process."""
    config = yaml.safe_load((REPO / "configs" / "accelerate" / "multi-node.yaml").read_text())
    config.update(
        main_process_ip="127.0.0.1", main_process_port=port, num_machines=2, num_processes=2, mixed_precision="no"
    )
    path = tmp_path / f"multi-node-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


STARTED: list[Node] = []


@pytest.fixture(autouse=True)
def no_leftover_nodes():
    """Whatever a failed test leaves running (agents, workers, their ports) is killed."""
    yield
    while STARTED:
        node = STARTED.pop()
        for pid in process_tree(node.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Node:
    """One `accelerate launch`, its output in a file (a pipe nobody reads would block it)."""

    def __init__(self, command: list[str], cwd: Path, log: Path):
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as sink:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
        self.pid = self.process.pid
        STARTED.append(self)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def communicate(self, timeout: float) -> tuple[str, None]:
        self.process.wait(timeout=timeout)
        return self.log.read_text(), None


def start_node(
    launcher: Path, rank: int, config: Path, cwd: Path, extra: list[str] = (), join_timeout_s: int = JOIN_TIMEOUT_S
) -> Node:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate),
        "launch",
        "--config_file",
        str(launcher),
        "--machine_rank",
        str(rank),
        "--rdzv_backend",
        "c10d",
        "--rdzv_conf",
        f"join_timeout={join_timeout_s}",
        str(REPO / "launch" / "train.py"),
        "--config",
        str(config),
        *extra,
    ]
    return Node(command, cwd, cwd / f"node{rank}-{launcher.stem}-{len(extra)}.log")


def start_nodes(launcher: Path, config: Path, cwd: Path, extra: list[str] = ()) -> list[Node]:
    """Node 0 first, node 1 once node 0 listens on the rendezvous port: on one machine both
    would otherwise race to host the c10d store."""
    port = yaml.safe_load(launcher.read_text())["main_process_port"]
    first = start_node(launcher, 0, config, cwd, extra)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    return [first, start_node(launcher, 1, config, cwd, extra)]


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (from /proc): torchrun starts its workers in sessions of
    their own, so killing the launcher's process group would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += children.get(pid, [])
    return tree


def wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s")


def run_config(tmp_path: Path, shards: Path, run_dir: Path, **training) -> Path:
    return write_config(
        tmp_path / "run.yaml",
        tiny_config(
            run_dir,
            shards,
            training={"max_steps": 6, "collective_timeout_minutes": 0.5, **training},
            validation={"every_steps": 2, "batch_size": 8, "max_seconds": 2.0, "timeout_minutes": 2},
            checkpoint={"every_steps": 2, "keep_last": 2},
        ),
    )


def test_two_nodes_train_validate_checkpoint_once_stop_and_resume(shards, tmp_path):
    run_dir = tmp_path / "run"
    config = run_config(tmp_path, shards, run_dir, max_steps=1000)
    launcher = launcher_config(tmp_path, 29830)
    nodes = start_nodes(launcher, config, tmp_path)
    log = run_dir / "train.log"
    wait_for(log, "step 4 loss=", 300)
    for node in nodes:
        os.killpg(node.pid, signal.SIGTERM)
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    # Each node's worker saves and exits 0; torchrun's agent, signalled too (the whole job is
    # preempted), reports the signal itself: 143 = 128 + SIGTERM.
    assert [node.returncode for node in nodes] == [143, 143], "\n\n".join(o[-3000:] for o in outputs)
    assert all("stopped at step" in output for output in outputs)
    text = log.read_text()
    assert "ranks=2" in text and "stop requested by signal" in text
    assert text.count("mode=classifier ranks=2") == 1  # one tracker: global rank 0's
    saved = ckpt.list_checkpoints(run_dir / "checkpoints")
    stopped_at = ckpt.read_trainer_state(saved[-1])["step"]
    assert stopped_at >= 4 and all(p.name.startswith("step-") for p in saved)
    records = read_metrics(run_dir)
    assert len([r for r in records if r["step"] == 2]) == 1  # validated once, not once per node
    assert sorted(p.name for p in saved[-1].glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]

    launcher = launcher_config(tmp_path, 29832)
    extra = ["--resume", "latest", "--set", f"training.max_steps={stopped_at + 2}"]
    nodes = start_nodes(launcher, config, tmp_path, extra)
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert f"start_step={stopped_at}" in log.read_text()
    assert read_metrics(run_dir)[-1]["step"] == stopped_at + 2


def test_a_node_that_never_arrives_is_an_error_within_the_join_timeout(shards, tmp_path):
    config = run_config(tmp_path, shards, tmp_path / "alone")
    began = time.time()
    # A shorter join timeout than the other tests': here no second node is ever started, so
    # waiting longer for it proves nothing more.
    node = start_node(launcher_config(tmp_path, 29834), 0, config, tmp_path, join_timeout_s=LONELY_JOIN_TIMEOUT_S)
    output, _ = node.communicate(timeout=LONELY_JOIN_TIMEOUT_S + 120)
    assert node.returncode != 0
    assert "RendezvousTimeoutError" in output
    assert time.time() - began < LONELY_JOIN_TIMEOUT_S + 90


def test_a_node_that_dies_mid_run_ends_the_other_with_an_error(shards, tmp_path):
    run_dir = tmp_path / "dies"
    config = run_config(tmp_path, shards, run_dir, max_steps=1000)
    launcher = launcher_config(tmp_path, 29836)
    nodes = start_nodes(launcher, config, tmp_path)
    wait_for(run_dir / "train.log", "step 2 loss=", 300)
    for pid in process_tree(nodes[1].pid):  # the whole node: launcher, agent, worker
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    began = time.time()
    output, _ = nodes[0].communicate(timeout=240)
    assert nodes[0].returncode != 0, output[-3000:]
    assert time.time() - began < 150  # the 30 s collective timeout, the launcher's own checks, no hang
    assert any(
        word in output
        for word in (
            "CollectiveError",
            "Connection closed by peer",
            "ChildFailedError",
            "RendezvousClosedError",
            "collective",
        )
    ), output[-3000:]
