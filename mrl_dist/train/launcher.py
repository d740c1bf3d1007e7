"""Make multi-process CPU launches give real gloo ranks, or say which command does.

Two gaps in how `accelerate launch` treats CPU-only machines (accelerate 1.x):

1. `accelerate launch --cpu --num_processes N` uses its "simple" launcher, which starts a
   single process and relies on `mpirun` for the others. Without mpirun the run would silently
   have one rank, and the launcher exports no process count (only MASTER_ADDR / MASTER_PORT when
   N > 1) from which the others could be started. `refuse_single_process_cpu_launch` notices that
   case (ACCELERATE_USE_CPU and MASTER_ADDR set, no rank from torchrun or MPI) and stops with the
   command that starts N ranks: `accelerate launch --multi_gpu --num_processes N` (torchrun).
2. Under torchrun (`--multi_gpu`, or torchrun itself) with no CUDA, Accelerate only joins the
   process group when ACCELERATE_USE_CPU is set; `use_cpu_when_no_gpu` sets it.
"""

from __future__ import annotations

import os
import shlex
import sys

# What a launcher that really started the ranks exports: torchrun, or MPI (Accelerate reads these).
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


class LaunchError(RuntimeError):
    """The launcher did not start the processes asked for; the message names the command that does."""


def refuse_single_process_cpu_launch() -> None:
    """Raise LaunchError (one line naming the commands to use) when `accelerate launch --cpu` was
    asked for several processes but started one, with no mpirun to start the others."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1"):
        return
    if "MASTER_ADDR" not in os.environ or any(name in os.environ for name in RANK_VARIABLES):
        return
    script = shlex.join(sys.argv)
    raise LaunchError(
        "`accelerate launch --cpu` with more than one process started only this one and left the "
        "others to mpirun, which did not start them; for N CPU ranks over gloo use "
        f"`accelerate launch --multi_gpu --num_processes N {script}` or `torchrun --nproc_per_node N {script}` "
        "(a config file: distributed_type MULTI_GPU; without CUDA the ranks join as CPU ranks), or leave "
        "out --num_processes for one process"
    )


def use_cpu_when_no_gpu() -> None:
    """Under a multi-process launcher on a machine without CUDA, join as gloo CPU ranks."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"
