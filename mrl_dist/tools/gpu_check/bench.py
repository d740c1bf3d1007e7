"""Section bench: the model step alone (mrl_dist/tools/bench.py) per mode and size, with FLOPs per
crop and MFU; the distill mode's step (random teacher files) is timed here."""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .check import Check, OutOfTime, SectionError, _free_device_memory, _synchronize, error_text
from .flops import count_flops, model_flops_utilisation
from .launching import output_tail, run_logged, subprocess_env
from .plan import REPO, BenchSize, bench_sizes_from_configs, shipped_gpu_configs

if TYPE_CHECKING:  # the training code is imported when a case runs, not by --help
    from ...tools.bench import ThroughputResult

BENCH_CASES = ("mrl-frozen", "mrl-unfrozen", "classifier", "distill")
# The case run compiled too (training.compile): the unfrozen MRL step, whose model FLOP
# utilisation the GPU goal names (>= 25 % for b2).
COMPILED_CASE = "mrl-unfrozen"


def _flops_per_crop_of_bench_mode(
    preset: str, mode: str, batch_size: int, crop_seconds: float, device: str, precision: str
) -> float:
    """One forward + backward of the trainer's TrainModule, counted. FLOPs per crop do not depend
    on the batch (every counted op is linear in it), so a small batch keeps this cheap."""
    from ...tools.bench import VOXCELEB2_SPEAKERS, bench_config, build_training_step, synthetic_batch

    count_batch = min(batch_size, 8)
    cfg = bench_config(preset, mode, count_batch, crop_seconds, precision)
    bench = build_training_step(cfg, VOXCELEB2_SPEAKERS, device)
    batch = synthetic_batch(count_batch, crop_seconds, VOXCELEB2_SPEAKERS, device)
    flops = count_flops(lambda: bench.step.micro_batch(bench.module, batch))  # forward + backward
    bench.step.optimizer.zero_grad(set_to_none=True)
    return flops / count_batch


def _random_teacher_files(presets: Sequence[str], folder: Path) -> list[str]:
    """Official-format checkpoints of randomly initialised presets: the trainer's distill mode
    loads teachers from files, and nothing may be downloaded (speed does not depend on weights)."""
    from ...models import build_preset, save_official_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in presets:
        path = folder / f"{name}-random.pt"
        if not path.is_file():
            torch.manual_seed(0)
            save_official_checkpoint(build_preset(name), path)
        paths.append(str(path))
    return paths


def distill_teacher_dims(dims: Sequence[int], teachers: int) -> list[list[int]]:
    """Small teachers take one short prefix each, the last (largest) teacher the rest: b0+b2 ->
    [64], [128, 192, 256], as configs/distill-b0-b2-b6.yaml gives its small teachers the short
    prefixes."""
    dims = list(dims)
    if not 1 <= teachers <= len(dims):
        raise ValueError(f"{teachers} teachers for {len(dims)} student dims {dims}")
    return [dims[i : i + 1] for i in range(teachers - 1)] + [dims[teachers - 1 :]]


def measure_distill_throughput(
    teachers: Sequence[str],
    student: str,
    batch_size: int,
    crop_seconds: float,
    steps: int,
    warmup: int,
    repeats: int,
    device: str,
    precision: str,
    work_dir: Path,
) -> dict[str, Any]:
    """The trainer's distill mode (DistillMode: student ReDimNetMRL, DistillationLoss with adapters,
    similarity and AAM terms, teachers run live under autocast) timed on a synthetic batch, the way
    `measure_throughput` times the other modes: the trainer's TrainingStep (bench.build_training_step)."""
    from ...config import config_from_dict
    from ...tools.bench import VOXCELEB2_SPEAKERS, build_training_step, synthetic_batch
    from ...train.modes import describe_parameters

    dims = [64, 128, 192, 256]
    files = _random_teacher_files(teachers, work_dir / "teachers")
    split = distill_teacher_dims(dims, len(files))
    cfg = config_from_dict(
        {
            "model": {"backbone": student, "pretrained": None, "mrl_dims": dims, "head_init": "random"},
            "data": {"crop_seconds": crop_seconds},
            "training": {
                "mode": "distill",
                "freeze_backbone": False,
                "batch_size": batch_size,
                "mixed_precision": precision,
            },
            "distill": {
                "teachers": [{"source": f, "dims": d, "weight": 1.0} for f, d in zip(files, split)],
                "losses": {"embedding": 1.0, "similarity": 1.0, "aam": 0.5},
            },
        },
        source=f"gpu-check distill {'+'.join(teachers)} -> {student}",
    )
    torch.manual_seed(0)
    bench = build_training_step(cfg, VOXCELEB2_SPEAKERS, device)  # the teachers run in the mode's loss_inputs
    batch = synthetic_batch(batch_size, crop_seconds, VOXCELEB2_SPEAKERS, device)

    step = functools.partial(bench, batch)
    began = time.perf_counter()
    flops = count_flops(step)  # the first warm-up step, counted
    _synchronize(device)
    first_step_s = time.perf_counter() - began
    for _ in range(max(0, warmup - 1)):
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        _synchronize(device)
        began = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss)
        _synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - began))
    sizes = describe_parameters(bench.module)
    peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if device == "cuda" else (None, None)
    return {
        "crops_per_s": rates,
        "flops_per_crop": flops / batch_size,
        "peak_allocated_bytes": peak[0],
        "peak_reserved_bytes": peak[1],
        "parameters": sizes["parameters"],
        "trainable": sizes["trainable"],
        "first_step_s": first_step_s,
    }


@dataclass(frozen=True)
class BenchCase:
    """One row of the bench: a mode at a size, eager or compiled with `compile_backend`."""

    kind: str  # one of BENCH_CASES
    size: BenchSize
    compile_backend: str | None = None

    @property
    def label(self) -> str:
        compiled = f", compiled ({self.compile_backend})" if self.compile_backend else ""
        return f"{self.kind} batch {self.size.batch_size}{compiled}"


def bench_schedule(sizes: Sequence[BenchSize], compile_backend: str | None) -> list[BenchCase]:
    """The bench's cases in order of value, so that a short budget keeps the first ones: every eager
    mode at the size most GPU configs train at (distillation at its own configs' size), then the
    compiled step at that size, then the other sizes' eager cases."""
    if not sizes:
        raise ValueError("no bench sizes")
    main = max(sizes, key=lambda z: (len(z.configs), z.batch_size, z.crop_seconds))
    distill = next((z for z in sizes if "distill" in z.modes), main)
    first = [BenchCase(kind, distill if kind == "distill" else main) for kind in BENCH_CASES]
    compiled = [BenchCase(COMPILED_CASE, main, compile_backend)] if compile_backend not in (None, "none") else []
    rest = [BenchCase(kind, size) for size in sizes for kind in BENCH_CASES if BenchCase(kind, size) not in first]
    return first + compiled + rest


def _case_row(case: BenchCase, preset: str, teachers: Sequence[str]) -> dict[str, Any]:
    return {
        "case": case.kind,
        "preset": preset,
        "batch_size": case.size.batch_size,
        "crop_seconds": case.size.crop_seconds,
        "configs": list(case.size.configs),
        "teachers": list(teachers) if case.kind == "distill" else None,
        "compile_backend": case.compile_backend,
    }


def _measure_eager(check: Check, case: BenchCase) -> dict[str, Any]:
    plan, device, precision, size = check.plan, check.device, check.precision, case.size
    if case.kind == "distill":
        measured = measure_distill_throughput(
            plan.teachers,
            plan.preset,
            size.batch_size,
            size.crop_seconds,
            plan.bench_steps,
            plan.bench_warmup,
            plan.bench_repeats,
            device,
            precision,
            check.work_dir,
        )
        _free_device_memory(device)  # the function's models are gone once it returns
        return measured
    from ...tools.bench import measure_throughput

    flops = _flops_per_crop_of_bench_mode(plan.preset, case.kind, size.batch_size, size.crop_seconds, device, precision)
    _free_device_memory(device)  # before measure_throughput resets the peak statistics
    result = measure_throughput(
        plan.preset,
        case.kind,
        batch_size=size.batch_size,
        crop_seconds=size.crop_seconds,
        steps=plan.bench_steps,
        warmup=plan.bench_warmup,
        repeats=plan.bench_repeats,
        device=device,
        precision=precision,
    )
    return _measured(result, flops)


def _measured(result: ThroughputResult, flops_per_crop: float) -> dict[str, Any]:
    """A bench row's measured fields from `measure_throughput`'s result."""
    return {
        "crops_per_s": result.crops_per_second,
        "flops_per_crop": flops_per_crop,
        "peak_allocated_bytes": result.peak_allocated_bytes,
        "peak_reserved_bytes": result.peak_reserved_bytes,
        "parameters": result.parameters,
        "trainable": result.trainable,
        "first_step_s": result.first_step_seconds,
    }


def _measure_compiled(check: Check, case: BenchCase, flops_per_crop: float | None, timeout_s: float) -> dict[str, Any]:
    """The compiled step in its own process (launch/bench_train.py --compile: a compile cannot be
    interrupted inside a process), killed after `timeout_s`; the FLOPs per crop are the eager
    case's (compiling changes the kernels, not the model's arithmetic)."""
    plan, size = check.plan, case.size
    folder = check.work_dir / "bench-compiled"
    folder.mkdir(parents=True, exist_ok=True)
    result_file, log = folder / f"{case.kind}-{size.batch_size}.json", folder / "compiled.log"
    result_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(REPO / "launch" / "bench_train.py"),
        *("--preset", plan.preset, "--mode", case.kind),
        *("--batch-size", str(size.batch_size), "--crop-seconds", str(size.crop_seconds)),
        *("--steps", str(plan.bench_steps), "--warmup", str(plan.bench_warmup), "--repeats", str(plan.bench_repeats)),
        *("--device", check.device, "--precision", check.precision),
        *("--compile", "--compile-backend", str(case.compile_backend)),
        # As many threads as the eager cases had: a fair comparison on a CPU.
        *("--threads", str(torch.get_num_threads()), "--json", str(result_file)),
    ]
    rc = run_logged(command, log, timeout_s, subprocess_env(check), f"the compiled {case.kind} step")
    if rc != 0 or not result_file.is_file():
        raise SectionError(f"the compiled {case.kind} step exited {rc}", output_tail(log))
    from ...tools.bench import ThroughputResult

    result = ThroughputResult(**json.loads(result_file.read_text()))
    if flops_per_crop is None:
        flops_per_crop = _flops_per_crop_of_bench_mode(
            plan.preset, case.kind, size.batch_size, size.crop_seconds, check.device, check.precision
        )
    return _measured(result, flops_per_crop)


def bench_case(
    check: Check, case: BenchCase, eager_row: dict[str, Any] | None = None, timeout_s: float | None = None
) -> dict[str, Any]:
    """One bench row: crops/s, peak memory, FLOPs per crop and MFU of one mode at one size. A
    compiled case takes the same mode's eager row (`eager_row`) for its FLOPs and speed-up."""
    row = _case_row(case, check.plan.preset, check.plan.teachers)
    row["precision"] = check.precision
    if case.compile_backend:
        flops = eager_row["flops_per_crop"] if eager_row else None
        measured = _measure_compiled(check, case, flops, timeout_s or check.plan.compile_timeout_s)
    else:
        measured = _measure_eager(check, case)
    best = max(measured["crops_per_s"])
    row.update(
        status="ok",
        crops_per_s=best,
        crops_per_s_median=statistics.median(measured["crops_per_s"]),
        crops_per_s_blocks=measured["crops_per_s"],
        ms_per_step=1000 * case.size.batch_size / best,
        first_step_s=measured["first_step_s"],
        peak_allocated_bytes=measured["peak_allocated_bytes"],
        peak_reserved_bytes=measured["peak_reserved_bytes"],
        parameters=measured["parameters"],
        trainable=measured["trainable"],
        flops_per_crop=measured["flops_per_crop"],
        achieved_flops=measured["flops_per_crop"] * best,
        mfu=model_flops_utilisation(measured["flops_per_crop"], best, check.peak_flops),
    )
    if case.compile_backend and eager_row:
        row["speedup_over_eager"] = best / eager_row["crops_per_s"]
    return row


def _held_back(check: Check) -> tuple[float, list[str]]:
    """Seconds the bench leaves for the later sections that will run, and their names."""
    kept = [(name, seconds) for name, seconds in check.plan.reserve_s if name in check.args.sections]
    return sum(seconds for _, seconds in kept), [name for name, _ in kept]


def section_bench(check: Check) -> dict[str, Any]:
    plan = check.plan
    sizes = plan.bench_sizes or bench_sizes_from_configs(check.args.configs or shipped_gpu_configs())
    schedule = bench_schedule(sizes, check.args.compile_backend)
    held_back, later = _held_back(check)
    rows: list[dict[str, Any]] = []
    eager: dict[tuple[str, BenchSize], dict[str, Any]] = {}
    for case in schedule:
        # A compiled case needs room for its compile; it may use what is left up to its timeout.
        needs = min(plan.compile_timeout_s, 3 * plan.bench_case_s) if case.compile_backend else plan.bench_case_s
        available = check.remaining() - held_back
        described = _case_row(case, plan.preset, plan.teachers)
        if available < needs:
            reason = "time budget" + (f" ({held_back:.0f} s held for {', '.join(later)})" if later else "")
            rows.append({**described, "status": "skipped", "reason": reason})
            continue
        check.progress(f"bench: {case.label}")
        try:
            row = bench_case(
                check, case, eager.get((case.kind, case.size)), timeout_s=min(plan.compile_timeout_s, available)
            )
        except OutOfTime as error:  # a compile longer than the budget allows: not a failure of the code
            row = {**described, "status": "skipped", "reason": str(error), "output_tail": error.output_tail}
            check.progress(f"bench: {case.label} skipped: {error}")
        except Exception as error:  # one case (an OOM, a compile error) must not end the others
            row = {**described, "status": "failed", "error": error_text(error)}
            if isinstance(error, SectionError) and error.output_tail:
                row["output_tail"] = error.output_tail
            check.progress(f"bench: {case.label} failed: {type(error).__name__}: {error}")
        rows.append(row)
        if row["status"] == "ok" and not case.compile_backend:
            eager[(case.kind, case.size)] = row
        # Outside the except block: its traceback kept the failed case's tensors alive.
        _free_device_memory(check.device)
    return _bench_section(rows, sizes)


def _bench_section(rows: list[dict[str, Any]], sizes: Sequence[BenchSize]) -> dict[str, Any]:
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] == "ok"]
    section: dict[str, Any] = {
        "cases": rows,
        "sizes": [
            {"batch_size": z.batch_size, "crop_seconds": z.crop_seconds, "configs": list(z.configs)} for z in sizes
        ],
    }
    if failed:
        section.update(
            status="failed",
            error="; ".join(f"{r['case']} batch {r['batch_size']}: {r['error']}" for r in failed),
        )
    elif not done:
        section.update(status="skipped", reason="time budget")
    else:
        fastest = max(done, key=lambda r: r["crops_per_s"])
        skipped = len(rows) - len(done)
        section.update(
            status="ok",
            summary=f"{len(done)} cases"
            + (f", {skipped} skipped (time budget)" if skipped else "")
            + f"; fastest {fastest['crops_per_s']:,.0f} crops/s ({fastest['case']}, "
            f"batch {fastest['batch_size']})",
        )
        compiled = [r for r in done if r.get("speedup_over_eager")]
        if compiled:
            r = compiled[0]
            section["summary"] += (
                f"; compiled {r['case']} {r['speedup_over_eager']:.2f}x eager (first step {r['first_step_s']:.0f} s)"
            )
    return section
