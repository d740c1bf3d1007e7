"""Section loader: crops/s from the demo shards into device memory per shard codec and loader
worker count (and per core: a worker is a process on a core of its own), then end to end: the
loader feeding the frozen-trunk MRL training step, the recipe whose GPU goal is >= 20,000 crops/s."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

import torch

from .check import Check, _free_device_memory, _synchronize, error_text

END_TO_END_GOAL = 20_000  # crops/s per GPU, b2 frozen-trunk MRL step fed from shards


def time_loader(
    manifest: Path,
    num_workers: int,
    batch_size: int,
    crop_seconds: float,
    seconds: float,
    device: str,
    step: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Crops/s of make_train_loader's batches copied into device memory (and through `step`, a
    training step, when given), after warm-up batches (each worker's first batch carries its
    start-up; a step's first calls its allocations); timed for `seconds`, at least 2 batches."""
    from ...data.pipeline import make_train_loader

    cuda = device == "cuda"
    loader = make_train_loader(
        manifest,
        batch_size=batch_size,
        crop_seconds=crop_seconds,
        num_workers=num_workers,
        seed=0,
        rank=0,
        world_size=1,
        shuffle_buffer=256,
        steps_per_epoch=100_000,
        pin_memory=cuda,
    )
    # TrainLoader.__iter__ is a generator function (annotated Iterator); `close` below needs the generator.
    batches = cast(Generator[dict, None, None], iter(loader))

    def one() -> None:
        batch = next(batches)
        moved = {key: batch[key].to(device, non_blocking=cuda) for key in ("wave", "label")}
        if step is not None:
            step(moved)

    began = time.perf_counter()
    for _ in range(max(1, num_workers) + (2 if step is not None else 1)):
        one()
    _synchronize(device)
    first = time.perf_counter() - began
    count, began = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - began < seconds:
        one()
        count += 1
    _synchronize(device)
    elapsed = time.perf_counter() - began
    batches.close()  # ends the epoch's DataLoader, which shuts its workers down
    crops_per_s = count * batch_size / elapsed
    return {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "crop_seconds": crop_seconds,
        "crops_per_s": crops_per_s,
        "crops_per_s_per_core": crops_per_s / max(1, num_workers),
        "batches_timed": count,
        "warmup_s": round(first, 2),
        "status": "ok",
    }


def _end_to_end(check: Check, codec: str, workers: int) -> dict[str, Any]:
    """The loader (`codec`, `workers`) feeding the trainer's frozen-trunk MRL step on the device."""
    from ...tools.bench import bench_config, build_training_step

    plan = check.plan
    cfg = bench_config(plan.preset, "mrl-frozen", plan.loader_batch, plan.loader_crop, check.precision)
    torch.manual_seed(0)
    bench = build_training_step(cfg, device=check.device)
    row = time_loader(
        check.shards(codec) / "train.manifest.json",
        workers,
        plan.loader_batch,
        plan.loader_crop,
        plan.loader_seconds,
        check.device,
        step=bench,
    )
    del bench
    _free_device_memory(check.device)
    return {**row, "codec": codec, "preset": plan.preset, "step": f"{plan.preset} mrl-frozen ({check.precision})"}


def section_loader(check: Check) -> dict[str, Any]:
    plan = check.plan
    rows = []
    for codec in check.args.loader_codecs:
        for workers in check.args.loader_workers:
            if check.remaining() < plan.loader_seconds + 5:
                rows.append({"codec": codec, "num_workers": workers, "status": "skipped", "reason": "time budget"})
                continue
            check.progress(f"loader: {codec}, {workers} workers")
            try:
                manifest = check.shards(codec) / "train.manifest.json"
                row = time_loader(
                    manifest, workers, plan.loader_batch, plan.loader_crop, plan.loader_seconds, check.device
                )
                rows.append({**row, "codec": codec})
            except Exception as error:
                rows.append({"codec": codec, "num_workers": workers, "status": "failed", "error": error_text(error)})
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] == "ok"]
    section: dict[str, Any] = {"rows": rows, "into": check.device, "pin_memory": check.device == "cuda"}
    if done:  # end to end with the most workers, from the codec that delivered most with them
        most = max(r["num_workers"] for r in done)
        best = max((r for r in done if r["num_workers"] == most), key=lambda r: r["crops_per_s"])
        if check.remaining() < plan.loader_seconds + 3 * plan.bench_case_s:
            section["end_to_end"] = {"status": "skipped", "reason": "time budget"}
        else:
            check.progress(f"loader: end to end, {best['codec']}, {most} workers, {plan.preset} frozen step")
            try:
                section["end_to_end"] = {**_end_to_end(check, best["codec"], most), "goal_crops_per_s": END_TO_END_GOAL}
            except Exception as error:
                section["end_to_end"] = {"status": "failed", "error": error_text(error)}
                failed.append({"codec": best["codec"], "num_workers": most, **section["end_to_end"]})
            _free_device_memory(check.device)
    if failed:
        section.update(
            status="failed",
            error="; ".join(f"{r['codec']}, {r['num_workers']} workers: {r['error']}" for r in failed),
        )
    elif not done:
        section.update(status="skipped", reason="time budget")
    else:
        best = max(done, key=lambda r: r["crops_per_s"])
        summary = (
            f"best {best['crops_per_s']:,.0f} crops/s ({best['codec']}, {best['num_workers']} workers, batch "
            f"{best['batch_size']}, {best['crop_seconds']:g} s crops)"
        )
        end = section.get("end_to_end", {})
        if end.get("status") == "ok":
            summary += f"; end to end through the {end['step']} step {end['crops_per_s']:,.0f} crops/s"
        section.update(status="ok", summary=summary)
    return section
