"""Section bench: the model step alone (mrl_dist/tools/bench.py) per mode and size, with FLOPs per
crop and MFU; the distill mode's step (random teacher files) is timed here."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .check import Check, _free_device_memory, _synchronize
from .flops import count_flops, model_flops_utilisation
from .plan import BenchSize, bench_sizes_from_configs, shipped_gpu_configs

BENCH_CASES = ("mrl-frozen", "mrl-unfrozen", "classifier", "distill")


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
    flops = count_flops(step)  # the first warm-up step, counted
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
    }


def bench_case(check: Check, kind: str, size: BenchSize) -> dict[str, Any]:
    """One bench row: crops/s, peak memory, FLOPs per crop and MFU of one mode at one size."""
    plan, device, precision = check.plan, check.device, check.precision
    row: dict[str, Any] = {
        "case": kind,
        "preset": plan.preset,
        "batch_size": size.batch_size,
        "crop_seconds": size.crop_seconds,
        "precision": precision,
        "configs": list(size.configs),
        "teachers": list(plan.teachers) if kind == "distill" else None,
    }
    if kind == "distill":
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
    else:
        from ...tools.bench import measure_throughput

        flops = _flops_per_crop_of_bench_mode(plan.preset, kind, size.batch_size, size.crop_seconds, device, precision)
        _free_device_memory(device)  # before measure_throughput resets the peak statistics
        result = measure_throughput(
            plan.preset,
            kind,
            batch_size=size.batch_size,
            crop_seconds=size.crop_seconds,
            steps=plan.bench_steps,
            warmup=plan.bench_warmup,
            repeats=plan.bench_repeats,
            device=device,
            precision=precision,
        )
        measured = {
            "crops_per_s": result.crops_per_second,
            "flops_per_crop": flops,
            "peak_allocated_bytes": result.peak_allocated_bytes,
            "peak_reserved_bytes": result.peak_reserved_bytes,
            "parameters": result.parameters,
            "trainable": result.trainable,
        }
    best = max(measured["crops_per_s"])
    row.update(
        status="ok",
        crops_per_s=best,
        crops_per_s_median=statistics.median(measured["crops_per_s"]),
        crops_per_s_blocks=measured["crops_per_s"],
        ms_per_step=1000 * size.batch_size / best,
        peak_allocated_bytes=measured["peak_allocated_bytes"],
        peak_reserved_bytes=measured["peak_reserved_bytes"],
        parameters=measured["parameters"],
        trainable=measured["trainable"],
        flops_per_crop=measured["flops_per_crop"],
        achieved_flops=measured["flops_per_crop"] * best,
        mfu=model_flops_utilisation(measured["flops_per_crop"], best, check.peak_flops),
    )
    return row


def section_bench(check: Check) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    sizes = check.plan.bench_sizes or bench_sizes_from_configs(check.args.configs or shipped_gpu_configs())
    # A GPU case takes ~10-20 s (model build, FLOP count, warm-up, timed blocks); --quick ~1 s.
    needs = 2.0 if check.args.quick else 20.0
    for size in sizes:
        for kind in BENCH_CASES:
            label = f"{kind} batch {size.batch_size}"
            if check.remaining() < needs:
                rows.append(
                    {
                        "case": kind,
                        "batch_size": size.batch_size,
                        "crop_seconds": size.crop_seconds,
                        "preset": check.plan.preset,
                        "status": "skipped",
                        "reason": "time budget",
                    }
                )
                continue
            check.progress(f"bench: {label}")
            try:
                rows.append(bench_case(check, kind, size))
            except Exception as error:  # one case (an OOM, say) must not end the others
                rows.append(
                    {
                        "case": kind,
                        "batch_size": size.batch_size,
                        "crop_seconds": size.crop_seconds,
                        "preset": check.plan.preset,
                        "status": "failed",
                        "error": f"{type(error).__name__}: {error}"[:500],
                    }
                )
                check.progress(f"bench: {label} failed: {type(error).__name__}: {error}")
            # Outside the except block: its traceback kept the failed case's tensors alive.
            _free_device_memory(check.device)
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
            status="failed", error="; ".join(f"{r['case']} batch {r['batch_size']}: {r['error']}" for r in failed)
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
    return section
