"""Run configs and helpers shared by the trainer's tests: tiny runs on a small demo corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_config(run_dir: Path, shards: Path, **sections) -> dict:
    """A 4-step classifier run of the tiny preset (batch 8, 1 s crops); `sections` update it."""
    config = {
        "run_dir": str(run_dir),
        "model": {"backbone": "tiny", "pretrained": None, "mrl_dims": [32, 64, 192], "head_init": "random"},
        "data": {
            "train": str(shards / "train.manifest.json"),
            "val": str(shards / "val.manifest.json"),
            "crop_seconds": 1.0,
            "num_workers": 0,
            "shuffle_buffer": 16,
        },
        "training": {
            "mode": "classifier",
            "batch_size": 8,
            "max_steps": 4,
            "steps_per_epoch": 3,
            "mixed_precision": "no",
            "schedule": {"warmup_steps": 1, "decay": "cosine"},
            "optimizer": {"name": "adamw", "lr": 0.002},
        },
        "validation": {"every_steps": 2, "batch_size": 8, "max_seconds": 2.0},
        "checkpoint": {"every_steps": 2, "keep_last": 1, "best_metric": "mean_eer"},
        "logging": {"every_steps": 1, "tensorboard": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def launch(args: list[str], cwd: Path) -> subprocess.Popen:
    """A child process with one intra-op thread each (2 ranks share 2 cores), output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def accelerate_two_cpu_processes(config: Path, port: int, precision: str = "no", extra: list[str] = ()) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes 2` of launch/train.py: 2 gloo ranks (torchrun, no CUDA)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        precision,
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(REPO / "launch" / "train.py"),
        "--config",
        str(config),
        *extra,
    ]
