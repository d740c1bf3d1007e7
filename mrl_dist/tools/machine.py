"""The header line every benchmark prints: when, on what, under which load, by which command.

# 2026-12-03 Intel(R) Xeon(R) Processor, 2 CPUs, torch 2.13.0+cpu, 2 threads, load average 0.4, ...
# python launch/bench_search.py --threads 1
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as `lscpu` reports it, or what `platform` knows."""
    lscpu = shutil.which("lscpu")
    if lscpu is not None:
        try:
            listing = subprocess.run([lscpu], capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        for line in listing.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def command_line() -> str:
    """`python SCRIPT ARGS...` as this process was started (the script relative to the working folder)."""
    script = Path(sys.argv[0])
    if script.is_absolute():
        try:
            script = script.relative_to(Path.cwd())
        except ValueError:
            pass
    return "python " + shlex.join([script.as_posix(), *sys.argv[1:]])


def machine_line(*extras: str) -> str:
    """`# date CPU, CPUs, torch, threads[, extras], load average` (extras: e.g. the GPU, onnxruntime)."""
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    parts = [f"{os.cpu_count()} CPUs", f"torch {torch.__version__}", f"{torch.get_num_threads()} threads", *extras]
    return f"# {datetime.date.today()} {cpu_model()}, {', '.join(parts)}, load average {load}"


def bench_header(*extras: str) -> str:
    """`machine_line(*extras)` and the command on a second line."""
    return f"{machine_line(*extras)}\n# {command_line()}"
