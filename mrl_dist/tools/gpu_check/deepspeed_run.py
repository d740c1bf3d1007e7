"""Section deepspeed: ~30 ZeRO-2 steps through configs/accelerate/deepspeed-zero2.yaml when deepspeed
imports (optionally pip-installed first); GPU only. Named so as not to shadow the deepspeed package."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from typing import Any

from .check import Check, SectionError, _need
from .launching import launch_prefix, output_tail, run_config, run_logged, subprocess_env, write_config
from .plan import REPO
from .trainlog import _read, parse_train_log, steps_per_second


def deepspeed_version(env: dict[str, str]) -> tuple[str | None, str]:
    """(version, import output) from `import deepspeed` in a fresh interpreter: its import probes
    CUDA and compilers, which must not leave state in this process."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None, "import deepspeed timed out after 180 s"
    lines = result.stdout.strip().splitlines()
    return (lines[-1] if result.returncode == 0 and lines else None), (result.stdout + result.stderr)[-3000:]


def section_deepspeed(check: Check) -> dict[str, Any]:
    if check.device != "cuda":
        return {"status": "skipped", "reason": "needs CUDA (DeepSpeed runs on GPUs only here)"}
    env = subprocess_env(check)
    version, import_output = deepspeed_version(env)
    installed_now = False
    if version is None:
        if not check.args.install_deepspeed:
            return {
                "status": "skipped",
                "reason": "deepspeed not installed (pass --install-deepspeed to pip install it)",
                "import_output": import_output[-1000:],
            }
        root = check.work_dir / "deepspeed"
        root.mkdir(parents=True, exist_ok=True)
        pip_log = root / "pip-install.log"
        check.progress("deepspeed: pip install deepspeed")
        rc = run_logged(
            [sys.executable, "-m", "pip", "install", "deepspeed"],
            pip_log,
            min(300.0, _need(check, 60, "pip install deepspeed")),
            env,
            "pip install deepspeed",
        )
        version, import_output = deepspeed_version(env)
        if rc != 0 or version is None:
            raise SectionError(
                f"pip install deepspeed exited {rc}" + ("" if rc else "; deepspeed still does not import"),
                output_tail(pip_log) + "\n" + import_output[-1500:],
            )
        installed_now = True

    plan = check.plan
    shards = check.shards()
    root = check.work_dir / "deepspeed"
    root.mkdir(parents=True, exist_ok=True)
    run_dir, log = root / "run", root / "launcher-output.log"
    every = max(1, plan.deepspeed_steps // 2)
    config = write_config(
        root / "zero2.yaml",
        run_config(
            check,
            run_dir,
            shards,
            training={"max_steps": plan.deepspeed_steps, "grad_clip": 5.0},
            validation={"every_steps": plan.deepspeed_steps},
            checkpoint={"every_steps": every},
        ),
    )
    command = [
        *launch_prefix(check, str(REPO / "configs" / "accelerate" / "deepspeed-zero2.yaml")),
        str(REPO / "launch" / "train.py"),
        "--config",
        str(config),
    ]
    check.progress(f"deepspeed: ZeRO-2, {plan.deepspeed_steps} steps")
    began = time.monotonic()
    rc = run_logged(command, log, _need(check, 60, "the DeepSpeed launch"), env, "DeepSpeed launch")
    wall = time.monotonic() - began
    segments = parse_train_log(_read(run_dir / "train.log"))
    from ...train import checkpointing as ckpt

    saved = ckpt.list_checkpoints(run_dir / "checkpoints")
    final_step = ckpt.read_trainer_state(saved[-1])["step"] if saved else None
    rate = steps_per_second(segments[-1], plan.run_batch) if segments else None
    section: dict[str, Any] = {
        "deepspeed": version,
        "installed_now": installed_now,
        "command": shlex.join(command),
        "rc": rc,
        "wall_s": round(wall, 1),
        "final_step": final_step,
        "max_steps": plan.deepspeed_steps,
        "steps_per_s": rate,
        "checkpoints": [p.name for p in saved],
    }
    if rc != 0 or final_step != plan.deepspeed_steps:
        section.update(
            status="failed",
            output_tail=output_tail(log),
            error=f"DeepSpeed launch exited {rc}, last checkpoint step {final_step} of {plan.deepspeed_steps}",
        )
    else:
        section.update(
            status="ok",
            summary=f"deepspeed {version}: {final_step} ZeRO-2 steps" + (f", {rate:.2f} steps/s" if rate else ""),
        )
    return section
