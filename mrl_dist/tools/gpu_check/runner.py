"""Running the check: the section table, one section that never raises, every section under the
global deadline with the report rewritten after each, and the command-line entry point."""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .bench import section_bench
from .check import Check, SectionError, _free_device_memory
from .deepspeed_run import section_deepspeed
from .flops import device_peak_flops, machine_info
from .loader import section_loader
from .plan import SECTIONS, Plan, make_plan, parse_args
from .report import JSON_NAME, MARKDOWN_NAME, REPORT_FORMAT, render_markdown, write_outputs
from .train_run import section_train_run

# run_section reads these two tables at each call, so a test may replace them on this module.
SECTION_FUNCTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "bench": section_bench,
    "train-run": section_train_run,
    "loader": section_loader,
    "deepspeed": section_deepspeed,
}
# Below this many seconds left a section is not started (GPU pass / --quick).
# The bench holds back Plan.reserve_s for the train-run and the loader, at least these minimums.
SECTION_MINIMUM_S = {"bench": (30, 3), "train-run": (120, 30), "loader": (15, 3), "deepspeed": (60, 5)}


def run_section(check: Check, name: str) -> dict[str, Any]:
    """Run one section, never raising: a failure becomes {"status": "failed", "error": ...}."""
    minimum = SECTION_MINIMUM_S[name][1 if check.args.quick else 0]
    if check.remaining() < minimum:
        check.progress(f"{name}: skipped (time budget: {check.remaining():.0f} s left, needs ~{minimum} s)")
        return {"status": "skipped", "reason": "time budget", "elapsed_s": 0.0}
    check.progress(f"{name}: start")
    began = time.monotonic()
    try:
        result = SECTION_FUNCTIONS[name](check)
    except SectionError as error:
        result = {**error.details, "status": "failed", "error": str(error)}
        if error.output_tail:
            result["output_tail"] = error.output_tail
    except Exception as error:  # any other bug or device error: recorded, the next section runs
        result = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-4000:],
        }
    _free_device_memory(check.device)  # after the except block, whose traceback held the tensors
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    ending = result.get("summary") or result.get("reason") or result.get("error", "")
    check.progress(f"{name}: {result['status']} in {result['elapsed_s']:.1f} s: {ending[:300]}")
    return result


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "launch/gpu_check.py", *argv])


def run_all(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Every requested section in order; the JSON and Markdown are rewritten after each one, so
    an interrupted check still leaves what it measured."""
    started = time.monotonic()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    temporary = args.work_dir is None
    # Absolute: the sections start commands from the repository, not from the caller's folder.
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-check-")).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device)
    peak, peak_source = device_peak_flops(info["gpu"], args.peak_tflops)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "machine": info,
        "settings": {
            "device": args.device,
            "quick": args.quick,
            "precision": args.precision,
            "time_budget_s": args.time_budget_s,
            "peak_flops": peak,
            "peak_source": peak_source,
            "sections": list(args.sections),
        },
        "sections": {},
        "elapsed_s": 0.0,
        "ok": True,
    }
    check = Check(
        args=args,
        plan=make_plan(args),
        work_dir=work_dir,
        deadline=started + args.time_budget_s,
        started=started,
        peak_flops=peak,
    )
    report["settings"]["plan"] = _plan_summary(check.plan)
    check.progress(
        f"device {args.device} ({info['gpu'] or info['cpu']}), precision {args.precision}, "
        f"budget {args.time_budget_s:.0f} s, work dir {work_dir}"
    )
    for name in SECTIONS:
        if name not in args.sections:
            continue
        report["sections"][name] = run_section(check, name)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        report["ok"] = all(s["status"] != "failed" for s in report["sections"].values())
        write_outputs(report, output)
    if temporary and report["ok"] and not args.keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        report["work_dir"] = str(work_dir)
        write_outputs(report, output)
        check.progress(f"work dir kept: {work_dir}")
    return report


def _plan_summary(plan: Plan) -> dict[str, Any]:
    summary = {k: v for k, v in plan.__dict__.items() if k != "bench_sizes"}
    summary["teachers"] = list(plan.teachers)
    return summary  # the bench sizes are in the bench section


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda, but torch sees no CUDA device; for the CPU self-test run "
            "python launch/gpu_check.py --device cpu --quick",
            file=sys.stderr,
        )
        return 2
    report = run_all(args, argv)
    print(render_markdown(report))
    statuses = {name: s["status"] for name, s in report["sections"].items()}
    print(
        f"wrote {Path(args.output) / JSON_NAME} and {Path(args.output) / MARKDOWN_NAME}; sections: {statuses}",
        file=sys.stderr,
    )
    return 0 if report["ok"] else 1
