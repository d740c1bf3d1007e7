"""The check's state shared by every section: the Check (arguments, plan, work folder, deadline,
demo shards), SectionError, the time-budget guard and the device-memory helpers."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .plan import Plan


class SectionError(RuntimeError):
    """A section failed; `output_tail` is the end of a subprocess's output when one was involved,
    `details` what the section had measured before it failed (kept in the report)."""

    def __init__(self, message: str, output_tail: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.output_tail = output_tail
        self.details = details or {}


def error_text(error: BaseException, limit: int = 500) -> str:
    """A failed row's `error` field: the exception's type and message, cut to `limit` characters."""
    return f"{type(error).__name__}: {error}"[:limit]


class OutOfTime(SectionError):
    """A subprocess killed at its time limit: the budget ran out, the code did not fail."""


@dataclass
class Check:
    args: argparse.Namespace
    plan: Plan
    work_dir: Path
    deadline: float  # time.monotonic() value
    started: float
    peak_flops: float | None
    _shards: dict[str, Path] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> str:
        return self.args.device

    @property
    def precision(self) -> str:
        return self.args.precision

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def progress(self, text: str) -> None:
        print(f"[gpu-check {time.monotonic() - self.started:6.1f} s] {text}", file=sys.stderr, flush=True)

    def shards(self, codec: str = "flac") -> Path:
        """Demo shards shared by the train-run, loader and deepspeed sections, made once per codec."""
        if codec not in self._shards:
            from ...demo.run import prepare_demo_shards

            began = time.monotonic()
            self._shards[codec] = prepare_demo_shards(
                self.work_dir / "demo",
                speakers=self.plan.corpus_speakers,
                utterances=self.plan.corpus_utterances,
                seed=0,
                shard_size_mb=1,
                codec=codec,
            )
            self.progress(f"demo shards ({codec}) ready in {time.monotonic() - began:.1f} s: {self._shards[codec]}")
        return self._shards[codec]


def _free_device_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _need(check: Check, seconds: float, what: str) -> float:
    """The time left for a subprocess, or SectionError when not even `seconds` are left."""
    left = check.remaining()
    if left < seconds:
        raise SectionError(f"time budget: {left:.0f} s left before {what}, which needs ~{seconds:.0f} s")
    return left
