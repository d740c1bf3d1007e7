"""Section train-run: a real `accelerate launch` on one device: a classifier backbone, then an MRL run
with unfreeze_after_steps stopped by SIGTERM and resumed with --resume latest, and its checks."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from .check import Check, SectionError, _need
from .launching import launch_prefix, output_tail, run_and_sigterm, run_config, run_logged, subprocess_env, write_config
from .plan import REPO, Plan
from .trainlog import _read, expected_unfreeze_lines, parse_train_log, steps_per_second


def _launch_record(
    name: str,
    command: list[str],
    rc: int,
    wall: float,
    segment: dict[str, Any] | None,
    crops_per_step: int,
    unfreeze_after: int | None,
    log: Path,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "launch": name,
        "command": shlex.join(command),
        "rc": rc,
        "wall_s": round(wall, 1),
        "start_step": None,
        "end_step": None,
        "unfreeze_lines": None,
        "unfreeze_expected": None,
        "steps_per_s": None,
    }
    if segment is not None:
        record.update(
            start_step=segment["start_step"],
            end_step=segment["end_step"],
            unfreeze_lines=segment["unfreeze_lines"],
            ranks=segment["ranks"],
            device=segment["device"],
            steps_per_s=steps_per_second(segment, crops_per_step * segment["ranks"]),
        )
        if unfreeze_after is not None:
            record["unfreeze_expected"] = expected_unfreeze_lines(segment, unfreeze_after)
    if rc != 0:
        record["output_tail"] = output_tail(log)
    return record


def section_train_run(check: Check) -> dict[str, Any]:
    from ...train import checkpointing as ckpt

    plan = check.plan
    shards = check.shards()
    root = check.work_dir / "train-run"
    root.mkdir(parents=True, exist_ok=True)
    env, log = subprocess_env(check), root / "launcher-output.log"
    train_py = str(REPO / "launch" / "train.py")
    launches: list[dict[str, Any]] = []
    startup = 20.0 if check.args.quick else 60.0  # imports, process group, model build, shards
    info: dict[str, Any] = {
        "launcher": "accelerate launch "
        + (
            "--cpu (1 process)"
            if check.device == "cpu"
            else "configs/accelerate/multi-gpu.yaml --num_processes 1 (torchrun, NCCL)"
        ),
        "batch_size": plan.run_batch,
        "crop_seconds": plan.run_crop,
        "num_workers": plan.run_workers,
        "max_steps": plan.mrl_steps,
        "unfreeze_after_steps": plan.unfreeze_after,
        "sigterm_after_step": plan.sigterm_after,
        "launches": launches,
    }

    # 1. A backbone: the MRL run needs a pretrained one for its frozen phase and unfreezing.
    backbone_dir = root / "classifier"
    config = write_config(root / "classifier.yaml", run_config(check, backbone_dir, shards))
    command = [*launch_prefix(check), train_py, "--config", str(config)]
    check.progress("train-run: classifier backbone")
    began = time.monotonic()
    rc = run_logged(command, log, _need(check, startup, "the classifier launch"), env, "classifier launch")
    segments = parse_train_log(_read(backbone_dir / "train.log"))
    launches.append(
        _launch_record(
            "classifier (backbone)",
            command,
            rc,
            time.monotonic() - began,
            segments[-1] if segments else None,
            plan.run_batch,
            None,
            log,
        )
    )
    if rc != 0 or not (backbone_dir / "best.pt").is_file():
        raise SectionError(
            f"classifier launch exited {rc}" + ("" if rc else ", no best.pt written"), output_tail(log), info
        )

    # 2. MRL on it: frozen, unfrozen at unfreeze_after, SIGTERM after sigterm_after, then resumed.
    mrl_dir = root / "mrl"
    config = write_config(
        root / "mrl.yaml",
        run_config(
            check,
            mrl_dir,
            shards,
            model={"backbone": str(backbone_dir / "best.pt"), "head_init": "pretrained"},
            training={
                "mode": "mrl",
                "freeze_backbone": True,
                "unfreeze_after_steps": plan.unfreeze_after,
                "max_steps": plan.mrl_steps,
            },
            validation={"every_steps": plan.every},
            checkpoint={"every_steps": plan.every},
        ),
    )
    command = [*launch_prefix(check), train_py, "--config", str(config)]
    check.progress(f"train-run: mrl, SIGTERM after step {plan.sigterm_after}")
    began = time.monotonic()
    rc, signalled_at = run_and_sigterm(
        command, log, mrl_dir / "train.log", plan.sigterm_after, _need(check, startup, "the MRL launch"), env
    )
    segments = parse_train_log(_read(mrl_dir / "train.log"))
    launches.append(
        _launch_record(
            "mrl, SIGTERM",
            command,
            rc,
            time.monotonic() - began,
            segments[-1] if segments else None,
            plan.run_batch,
            plan.unfreeze_after,
            log,
        )
    )
    if rc != 0:
        raise SectionError(f"MRL launch exited {rc} after SIGTERM", output_tail(log), info)
    saved = ckpt.list_checkpoints(mrl_dir / "checkpoints")
    stopped_at = ckpt.read_trainer_state(saved[-1])["step"] if saved else None

    resume = [*launch_prefix(check), train_py, "--config", str(config), "--resume", "latest"]
    check.progress(f"train-run: mrl --resume latest (from step {stopped_at})")
    began = time.monotonic()
    rc = run_logged(resume, log, _need(check, startup, "the resumed MRL launch"), env, "resumed MRL launch")
    segments = parse_train_log(_read(mrl_dir / "train.log"))
    launches.append(
        _launch_record(
            "mrl, --resume latest",
            resume,
            rc,
            time.monotonic() - began,
            segments[-1] if len(segments) >= 2 else None,
            plan.run_batch,
            plan.unfreeze_after,
            log,
        )
    )

    saved = ckpt.list_checkpoints(mrl_dir / "checkpoints")
    final_step = ckpt.read_trainer_state(saved[-1])["step"] if saved else None
    validations = [json.loads(line)["step"] for line in _read(mrl_dir / "metrics.jsonl").splitlines() if line.strip()]
    unfreeze_lines = sum(s["unfreeze_lines"] for s in segments)
    unfreeze_expected = sum(expected_unfreeze_lines(s, plan.unfreeze_after) for s in segments)
    checks = train_run_checks(segments, signalled_at, stopped_at, rc, final_step, validations, plan)
    failed = [f"{name}: {detail}" for name, (ok, detail) in checks.items() if not ok]
    resumed_rate = launches[-1]["steps_per_s"]
    section: dict[str, Any] = {
        **info,
        "stopped_at": stopped_at,
        "final_step": final_step,
        "finished": checks["finished"][0],
        "unfreeze_lines": unfreeze_lines,
        "unfreeze_expected": unfreeze_expected,
        "validations": validations,
        "checkpoints": [p.name for p in saved],
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }
    if rc != 0:
        section["output_tail"] = output_tail(log)
    if failed:
        section.update(status="failed", error="checks failed: " + "; ".join(failed))
    else:
        section.update(
            status="ok",
            summary=f"finished at step {final_step}, stopped at {stopped_at} and resumed; "
            f"{unfreeze_lines} 'unfrozen' line(s); {len(validations)} validations"
            + (f"; {resumed_rate:.2f} steps/s" if resumed_rate else ""),
        )
    return section


def train_run_checks(
    segments: list[dict[str, Any]],
    signalled_at: int | None,
    stopped_at: int | None,
    rc: int,
    final_step: int | None,
    validations: list[int],
    plan: Plan,
) -> dict[str, tuple[bool, str]]:
    """name -> (passed, what was seen) for the SIGTERM / resume / unfreeze run."""
    first = segments[0] if segments else None
    second = segments[1] if len(segments) >= 2 else None
    expected = [expected_unfreeze_lines(s, plan.unfreeze_after) for s in segments]
    seen = [s["unfreeze_lines"] for s in segments]
    stop_logged = first is not None and first["stopped_by_signal"]
    return {
        "sigterm_sent": (
            signalled_at is not None,
            f"signal at step {signalled_at}"
            if signalled_at is not None
            else "the run ended before train.log showed the step to signal at",
        ),
        "sigterm_exit_zero_with_checkpoint": (
            stop_logged and stopped_at is not None,
            f"stopped at step {stopped_at}, 'stop requested by signal' {'logged' if stop_logged else 'not logged'}",
        ),
        "resumed_from_checkpoint": (
            second is not None and second["start_step"] == stopped_at,
            f"second launch start_step={second['start_step'] if second else None}, checkpoint step {stopped_at}",
        ),
        "finished": (
            rc == 0 and final_step == plan.mrl_steps,
            f"resumed launch exit {rc}, last checkpoint step {final_step} of {plan.mrl_steps}",
        ),
        # Once per process lifetime that crossed the step; a resumed run unfreezes while building.
        "unfreeze_logged_once_per_crossing": (
            seen == expected,
            f"{sum(seen)} 'unfrozen' lines in train.log (per launch: {seen}), expected {sum(expected)} ({expected})",
        ),
        "validated_at_the_end": (
            bool(validations) and validations[-1] == plan.mrl_steps,
            f"validations at steps {validations}",
        ),
    }
