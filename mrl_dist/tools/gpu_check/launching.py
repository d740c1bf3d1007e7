"""Launching the trainer as a subprocess: the demo-shard run config, the `accelerate launch` prefix
for one process, logged runs killed at the time budget, and SIGTERM to the ranks at a given step."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .check import Check, OutOfTime
from .plan import REPO
from .trainlog import last_logged_step


def accelerate_launch() -> list[str]:
    """`accelerate launch` from the console script beside this interpreter, else its module form."""
    script = Path(sys.executable).with_name("accelerate")
    if script.is_file():
        return [str(script), "launch"]
    return [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    """A TCP port nobody listens on now, for the torchrun rendezvous (fixed ports collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_prefix(check: Check, accelerate_config: str | None = None) -> list[str]:
    """`accelerate launch` for one process: CPU (simple launcher), one GPU over NCCL (torchrun
    through multi-gpu.yaml; plain --num_processes 1 would start an undistributed process) or a
    given accelerate config (DeepSpeed)."""
    launch = accelerate_launch()
    if check.device == "cpu":
        return [
            *launch,
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            check.precision,
            "--dynamo_backend",
            "no",
        ]
    config = accelerate_config or str(REPO / "configs" / "accelerate" / "multi-gpu.yaml")
    return [
        *launch,
        "--config_file",
        config,
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        check.precision,
        "--main_process_port",
        str(free_port()),
    ]


def subprocess_env(check: Check) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if check.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # small shared CPUs: no oversubscription
    return env


def output_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, progress-bar redraws (carriage returns) split into lines."""
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])[-6000:]


def _kill_tree(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the launcher and its ranks
    process.wait()


def run_logged(command: list[str], log: Path, timeout_s: float, env: dict[str, str], what: str) -> int:
    """Run `command` with stdout+stderr to `log`; kill it (and its children) after `timeout_s`."""
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            raise OutOfTime(f"{what}: killed after {timeout_s:.0f} s (time budget)", output_tail(log)) from None


def trainer_processes(launcher_pid: int) -> list[int]:
    """pids of the launch/train.py ranks under an `accelerate launch` process."""
    import psutil  # an accelerate dependency

    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(launcher_pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if any(part.endswith("train.py") for part in child.cmdline()):
                    found.append(child.pid)
    return found


def run_and_sigterm(
    command: list[str], log: Path, train_log: Path, after_step: int, timeout_s: float, env: dict[str, str]
) -> tuple[int, int | None]:
    """Start a training launch, SIGTERM its trainer process(es) once train.log shows step
    `after_step`, and wait for the exit. Returns (exit code, step at which the signal went out;
    None if the run ended first). The ranks are signalled, not the launcher: accelerate's launcher
    answers SIGTERM by killing its child after 5 s, which is not how a preempted job ends."""
    offset = train_log.stat().st_size if train_log.is_file() else 0
    deadline = time.monotonic() + max(1.0, timeout_s)
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        signalled_at = None
        while process.poll() is None and time.monotonic() < deadline:
            step = last_logged_step(train_log, offset)
            if step >= after_step:
                ranks = trainer_processes(process.pid)
                for pid in ranks or [process.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                signalled_at = step
                break
            time.sleep(0.05)
        try:
            return process.wait(timeout=max(1.0, deadline - time.monotonic())), signalled_at
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            raise OutOfTime(f"{command[-1]}: killed after {timeout_s:.0f} s (time budget)", output_tail(log)) from None


def run_config(check: Check, run_dir: Path, shards: Path, **sections: dict) -> dict[str, Any]:
    """A trainer config for the demo shards (the shape of tests/test_train.py's tiny_config)."""
    plan = check.plan
    config: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {
            "backbone": plan.run_backbone,
            "pretrained": None,
            "mrl_dims": [64, 128, 192, 256],
            "head_init": "random",
        },
        "data": {
            "train": str(shards / "train.manifest.json"),
            "val": str(shards / "val.manifest.json"),
            "crop_seconds": plan.run_crop,
            "num_workers": plan.run_workers,
            "shuffle_buffer": 64,
        },
        "training": {
            "mode": "classifier",
            "batch_size": plan.run_batch,
            "max_steps": plan.classifier_steps,
            "steps_per_epoch": max(2, plan.every),
            "mixed_precision": check.precision,
            "schedule": {"warmup_steps": 2, "decay": "cosine"},
            "optimizer": {"name": "adamw", "lr": 0.002},
        },
        "validation": {"every_steps": plan.classifier_steps, "batch_size": 8, "max_seconds": plan.val_max_seconds},
        "checkpoint": {"every_steps": plan.classifier_steps, "keep_last": 2, "best_metric": "mean_eer"},
        "logging": {"every_steps": 1, "tensorboard": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
