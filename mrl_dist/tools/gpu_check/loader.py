"""Section loader: end-to-end crops/s from the demo shards into device memory per loader worker count."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

from .check import Check, _synchronize


def time_loader(
    manifest: Path, num_workers: int, batch_size: int, crop_seconds: float, seconds: float, device: str
) -> dict[str, Any]:
    """Crops/s of make_train_loader's batches copied into device memory, after warm-up batches
    (each worker's first batch carries its start-up); timed for `seconds`, at least 2 batches."""
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
    began = time.perf_counter()
    for _ in range(max(1, num_workers) + 1):
        next(batches)["wave"].to(device, non_blocking=cuda)
    first = time.perf_counter() - began
    _synchronize(device)
    count, began = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - began < seconds:
        next(batches)["wave"].to(device, non_blocking=cuda)
        count += 1
    _synchronize(device)
    elapsed = time.perf_counter() - began
    batches.close()  # ends the epoch's DataLoader, which shuts its workers down
    return {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "crop_seconds": crop_seconds,
        "crops_per_s": count * batch_size / elapsed,
        "batches_timed": count,
        "warmup_s": round(first, 2),
        "status": "ok",
    }


def section_loader(check: Check) -> dict[str, Any]:
    plan = check.plan
    manifest = check.shards() / "train.manifest.json"
    rows = []
    for workers in check.args.loader_workers:
        if check.remaining() < plan.loader_seconds + 5:
            rows.append({"num_workers": workers, "status": "skipped", "reason": "time budget"})
            continue
        check.progress(f"loader: {workers} workers")
        try:
            rows.append(
                time_loader(manifest, workers, plan.loader_batch, plan.loader_crop, plan.loader_seconds, check.device)
            )
        except Exception as error:
            rows.append({"num_workers": workers, "status": "failed", "error": f"{type(error).__name__}: {error}"[:500]})
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] == "ok"]
    section: dict[str, Any] = {"rows": rows, "into": check.device, "pin_memory": check.device == "cuda"}
    if failed:
        section.update(status="failed", error="; ".join(f"{r['num_workers']} workers: {r['error']}" for r in failed))
    elif not done:
        section.update(status="skipped", reason="time budget")
    else:
        best = max(done, key=lambda r: r["crops_per_s"])
        section.update(
            status="ok",
            summary=f"best {best['crops_per_s']:,.0f} crops/s with {best['num_workers']} "
            f"workers (batch {best['batch_size']}, {best['crop_seconds']:g} s crops)",
        )
    return section
