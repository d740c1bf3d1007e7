"""Make multi-process CPU launches give real gloo ranks.

Two gaps in how `accelerate launch` treats CPU-only machines (accelerate 1.x):

1. `accelerate launch --cpu --num_processes N` uses its "simple" launcher, which starts a
   single process and relies on `mpirun` for the others. Without mpirun the run silently has one
   rank. `relaunch_cpu_processes` notices that case (the launcher exported MASTER_ADDR for N > 1
   but no RANK) and restarts the script under `torch.distributed.run` with N processes.
2. Under torchrun (`--multi_gpu`, or torchrun itself) with no CUDA, Accelerate only joins the
   process group when ACCELERATE_USE_CPU is set; `use_cpu_when_no_gpu` sets it.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import yaml


def _launcher_num_processes() -> int | None:
    """`--num_processes` of the `accelerate launch` that started us (its argv or its config file)."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    for flag in ("--num_processes", "--num-processes"):
        for index, arg in enumerate(argv):
            if arg == flag and index + 1 < len(argv):
                return int(argv[index + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    for flag in ("--config_file", "--config-file"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            config = yaml.safe_load(Path(argv[argv.index(flag) + 1]).read_text()) or {}
            return config.get("num_processes")
    return None


def relaunch_cpu_processes() -> None:
    """Re-exec under torchrun when `accelerate launch --cpu --num_processes N>1` started one process."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1"):
        return
    if "RANK" in os.environ or "MASTER_ADDR" not in os.environ or os.environ.get("MRL_DIST_RELAUNCHED"):
        return
    processes = _launcher_num_processes()
    if not processes or processes < 2:
        return
    os.environ["MRL_DIST_RELAUNCHED"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        os.environ["MASTER_ADDR"],
        "--master_port",
        os.environ.get("MASTER_PORT", "29500"),
        *sys.argv,
    ]
    print(f"mrl-dist: starting {processes} CPU processes (gloo): {shlex.join(command)}", file=sys.stderr)
    sys.stdout.flush()
    os.execv(sys.executable, command)


def use_cpu_when_no_gpu() -> None:
    """Under a multi-process launcher on a machine without CUDA, join as gloo CPU ranks."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"
